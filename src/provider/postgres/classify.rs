//! Which columns look like they hold personal data or secrets, judged by
//! name and type, so a Sanitized copy can refuse to copy them in clear
//! unless the sanitize rules mask them or the source declares them safe.
//! Pure: no I/O.
//!
//! # Names
//! A column name is lower-cased and split into words on `_`. A term (say
//! `first_name`) matches when its words, joined, equal some consecutive
//! words of the name, joined: `first_name`, `firstname`, `billing_first_name`
//! and `firstName` (quoted, lower-cased) all match `first_name`, while
//! `username`, `hostname`, `filename` and `table_name` match nothing (`name`
//! alone is a person's name only in a table of people, below). A name whose
//! last word says it is *about* the value rather than the value
//! (`email_verified`, `token_type`, `address_status`) matches nothing.
//!
//! # Types
//! Most categories need a text-like type (typcategory `S`: text, varchar,
//! char, citext, and domains over them), so `email_verified boolean` or an
//! integer `tax_id` foreign key are not flagged. Card numbers may also be
//! numeric, passwords and tokens also `bytea`; birth dates count whatever
//! the type, and every `inet` column is an IP address. Arrays are judged by
//! their element type. The type's own name is checked against the same
//! terms, so a column of a domain `email` or `phone_number` counts.
//!
//! Deliberately not flagged: `city`, `country` and `state` (too common
//! outside addresses), `uuid` session ids, JSON documents.

/// What a column looks like it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Category {
    Email,
    Phone,
    NationalId,
    PersonName,
    Address,
    Secret,
    Password,
    Card,
    BirthDate,
    IpAddress,
}

impl Category {
    /// How an error message names the category.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Email => "email",
            Category::Phone => "phone",
            Category::NationalId => "national id",
            Category::PersonName => "person name",
            Category::Address => "address",
            Category::Secret => "token or secret",
            Category::Password => "password",
            Category::Card => "card number",
            Category::BirthDate => "birth date",
            Category::IpAddress => "IP address",
        }
    }
}

/// Terms per category, in priority order: the first category with a
/// matching term wins (`email_address` is an email, `ip_address` an IP
/// address, `password_reset_token` a password).
const TERMS: &[(Category, &[&str])] = &[
    (
        Category::Password,
        &["password", "passwd", "pwd", "password_hash", "pw_hash"],
    ),
    (
        Category::Secret,
        &[
            "token",
            "api_key",
            "apikey",
            "secret",
            "access_key",
            "private_key",
            "refresh_token",
            "session_id",
        ],
    ),
    (
        Category::Card,
        &[
            "card_number",
            "cc_number",
            "credit_card",
            "pan",
            "iban",
            "cvv",
            "cvc",
        ],
    ),
    (
        Category::NationalId,
        &[
            "ssn",
            "social_security",
            "national_id",
            "nin",
            "tax_id",
            "tin",
            "passport",
            "driver_license",
            "driver_licence",
            "drivers_license",
            "drivers_licence",
            "driving_license",
            "driving_licence",
        ],
    ),
    (Category::Email, &["email", "e_mail", "mail"]),
    (
        Category::Phone,
        &["phone", "telephone", "mobile", "msisdn", "tel", "fax"],
    ),
    (Category::IpAddress, &["ip", "ip_address", "remote_addr"]),
    (
        Category::BirthDate,
        &["dob", "date_of_birth", "birthdate", "birthday"],
    ),
    (
        Category::PersonName,
        &[
            "first_name",
            "last_name",
            "full_name",
            "surname",
            "given_name",
            "family_name",
            "middle_name",
            "maiden_name",
        ],
    ),
    (
        Category::Address,
        &[
            "address",
            "street",
            "postcode",
            "postal_code",
            "zip",
            "zipcode",
        ],
    ),
];

/// A last word that makes the column describe the value, not hold it.
const QUALIFIERS: &[&str] = &[
    "verified",
    "confirmed",
    "enabled",
    "disabled",
    "status",
    "count",
    "type",
    "kind",
    "format",
    "template",
    "provider",
    "policy",
    "length",
    "version",
    "domain",
];

/// Last words of table names that hold people, where a column named just
/// `name` is a person's name.
const PEOPLE: &[&str] = &[
    "users",
    "user",
    "customers",
    "customer",
    "people",
    "persons",
    "person",
    "employees",
    "employee",
    "contacts",
    "contact",
    "patients",
    "patient",
    "members",
    "member",
    "accounts",
    "account",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Text,
    Numeric,
    Binary,
    Inet,
    Other,
}

/// `schema.type(modifiers)[]` → `type`, unquoted and lower-cased.
fn base_type_name(ty: &str) -> String {
    let ty = ty.trim_end_matches("[]");
    let ty = ty.split_once('(').map_or(ty, |(name, _)| name);
    let ty = ty.rsplit_once('.').map_or(ty, |(_, name)| name);
    ty.trim().trim_matches('"').to_lowercase()
}

fn kind(base_type: &str, type_category: char) -> Kind {
    match type_category {
        'S' => Kind::Text,
        'N' => Kind::Numeric,
        // Network addresses: inet (and domains over it); cidr is a network.
        'I' if base_type != "cidr" => Kind::Inet,
        _ if base_type == "bytea" => Kind::Binary,
        _ => Kind::Other,
    }
}

fn accepts(category: Category, kind: Kind) -> bool {
    match category {
        Category::BirthDate => true,
        Category::Card => matches!(kind, Kind::Text | Kind::Numeric),
        Category::Password | Category::Secret => matches!(kind, Kind::Text | Kind::Binary),
        _ => kind == Kind::Text,
    }
}

/// The category whose terms a name matches, by words (see the module docs).
fn by_words(name: &str) -> Option<Category> {
    let lower = name.to_lowercase();
    let words: Vec<&str> = lower.split('_').filter(|w| !w.is_empty()).collect();
    let last = words.len().checked_sub(1)?;
    let matches_term = |term: &str| {
        let joined: String = term.split('_').collect();
        (0..words.len()).any(|start| {
            (start..words.len()).any(|end| {
                // A window ending before a qualifier does not count.
                let qualified = end < last && QUALIFIERS.contains(&words[last]);
                !qualified && words[start..=end].concat() == joined
            })
        })
    };
    TERMS
        .iter()
        .find(|(_, terms)| terms.iter().any(|t| matches_term(t)))
        .map(|(category, _)| *category)
}

fn is_people_table(table: &str) -> bool {
    let lower = table.to_lowercase();
    lower
        .rsplit('_')
        .next()
        .is_some_and(|last| PEOPLE.contains(&last))
}

/// What column `column` of table `table` looks like it holds, if anything
/// sensitive. `type_name` is `format_type()`'s text; `type_category` is
/// `pg_type.typcategory` (of the element type, for arrays).
pub fn sensitive(
    table: &str,
    column: &str,
    type_name: &str,
    type_category: char,
) -> Option<Category> {
    let base = base_type_name(type_name);
    let kind = kind(&base, type_category);
    if kind == Kind::Inet {
        return Some(Category::IpAddress);
    }
    let by_name = by_words(column).or_else(|| {
        (column.eq_ignore_ascii_case("name") && is_people_table(table))
            .then_some(Category::PersonName)
    });
    // A domain's name says what it holds as well as a column's does.
    by_name
        .filter(|c| accepts(*c, kind))
        .or_else(|| by_words(&base).filter(|c| accepts(*c, kind)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Category as C;

    fn text(column: &str) -> Option<Category> {
        sensitive("things", column, "text", 'S')
    }

    #[test]
    fn every_category_by_name() {
        let cases: &[(&str, Category)] = &[
            ("email", Category::Email),
            ("e_mail", Category::Email),
            ("mail", Category::Email),
            ("contact_email", Category::Email),
            ("email_address", Category::Email),
            ("phone", Category::Phone),
            ("mobile", Category::Phone),
            ("msisdn", Category::Phone),
            ("tel", Category::Phone),
            ("fax", Category::Phone),
            ("phone_number", Category::Phone),
            ("ssn", Category::NationalId),
            ("social_security_number", Category::NationalId),
            ("national_id", Category::NationalId),
            ("nin", Category::NationalId),
            ("tax_id", Category::NationalId),
            ("tin", Category::NationalId),
            ("passport_number", Category::NationalId),
            ("driver_license", Category::NationalId),
            ("driver_licence", Category::NationalId),
            ("first_name", Category::PersonName),
            ("firstname", Category::PersonName),
            ("firstName", Category::PersonName),
            ("billing_first_name", Category::PersonName),
            ("last_name", Category::PersonName),
            ("full_name", Category::PersonName),
            ("surname", Category::PersonName),
            ("given_name", Category::PersonName),
            ("family_name", Category::PersonName),
            ("middle_name", Category::PersonName),
            ("address", Category::Address),
            ("street", Category::Address),
            ("billing_address_line1", Category::Address),
            ("postcode", Category::Address),
            ("postal_code", Category::Address),
            ("zip", Category::Address),
            ("zipcode", Category::Address),
            ("zip_code", Category::Address),
            ("token", Category::Secret),
            ("api_key", Category::Secret),
            ("apikey", Category::Secret),
            ("secret", Category::Secret),
            ("client_secret", Category::Secret),
            ("access_key", Category::Secret),
            ("refresh_token", Category::Secret),
            ("session_id", Category::Secret),
            ("password", Category::Password),
            ("passwd", Category::Password),
            ("pwd", Category::Password),
            ("password_hash", Category::Password),
            ("pw_hash", Category::Password),
            ("encrypted_password", Category::Password),
            ("card_number", Category::Card),
            ("cc_number", Category::Card),
            ("credit_card", Category::Card),
            ("pan", Category::Card),
            ("iban", Category::Card),
            ("cvv", Category::Card),
            ("cvc", Category::Card),
            ("dob", Category::BirthDate),
            ("date_of_birth", Category::BirthDate),
            ("birthdate", Category::BirthDate),
            ("birth_date", Category::BirthDate),
            ("birthday", Category::BirthDate),
            ("ip_address", Category::IpAddress),
            ("remote_addr", Category::IpAddress),
            ("last_login_ip", Category::IpAddress),
        ];
        for (column, category) in cases {
            assert_eq!(text(column), Some(*category), "{column}");
        }
    }

    /// Asserts that each (table, column, type, type category) is judged
    /// the category given.
    fn assert_judged(cases: &[(&str, &str, &str, char, Option<C>)]) {
        for &(table, column, ty, typcategory, expected) in cases {
            assert_eq!(
                sensitive(table, column, ty, typcategory),
                expected,
                "{table}.{column} {ty}"
            );
        }
    }

    #[test]
    fn types_that_cannot_hold_the_value_are_not_flagged() {
        #[rustfmt::skip]
        let cases = [
            ("users", "email_verified", "boolean", 'B', None),
            ("users", "email", "integer", 'N', None),
            ("orders", "tax_id", "integer", 'N', None),
            ("users", "phone", "uuid", 'U', None),
            ("users", "address", "public.address_kind", 'E', None),
            // Card numbers may be numeric; passwords and tokens binary.
            ("payments", "card_number", "numeric(19,0)", 'N', Some(C::Card)),
            ("users", "password_hash", "bytea", 'U', Some(C::Password)),
            ("keys", "api_key", "bytea", 'U', Some(C::Secret)),
            // Birth dates whatever the type.
            ("users", "dob", "date", 'D', Some(C::BirthDate)),
            ("users", "birthday", "timestamp with time zone", 'D', Some(C::BirthDate)),
            // Text-like types besides text, and arrays of them.
            ("users", "ssn", "character varying(11)", 'S', Some(C::NationalId)),
            ("users", "email", "public.citext", 'S', Some(C::Email)),
            ("users", "phone", "text[]", 'S', Some(C::Phone)),
        ];
        assert_judged(&cases);
    }

    #[test]
    fn every_inet_column_is_an_ip_address() {
        assert_judged(&[
            ("events", "seen_from", "inet", 'I', Some(C::IpAddress)),
            ("events", "source", "inet[]", 'I', Some(C::IpAddress)),
            ("routes", "network", "cidr", 'I', None),
        ]);
    }

    #[test]
    fn domains_are_judged_by_their_name() {
        assert_judged(&[
            ("users", "contact", "public.email", 'S', Some(C::Email)),
            (
                "users",
                "reach",
                "\"Billing\".phone_number(20)",
                'S',
                Some(C::Phone),
            ),
            ("users", "contact", "public.label", 'S', None),
        ]);
    }

    #[test]
    fn name_is_a_person_only_in_a_table_of_people() {
        for table in [
            "users",
            "customers",
            "people",
            "persons",
            "employees",
            "contacts",
            "patients",
            "members",
            "accounts",
            "crm_contacts",
            "Customer",
        ] {
            assert_eq!(
                sensitive(table, "name", "text", 'S'),
                Some(Category::PersonName),
                "{table}"
            );
        }
        for table in ["products", "tags", "regions", "user_roles"] {
            assert_eq!(sensitive(table, "name", "text", 'S'), None, "{table}");
        }
    }

    #[test]
    fn no_silly_false_positives() {
        for column in [
            "username",
            "user_name",
            "created_at",
            "updated_at",
            "hostname",
            "filename",
            "file_name",
            "table_name",
            "display_name",
            "id",
            "description",
            "city",
            "country",
            "state",
            "company",
            "primary_key",
            "public_key",
            "sort_key",
            "email_verified",
            "email_status",
            "token_type",
            "address_kind",
            "phone_confirmed",
            "timezone",
            "status",
            "title",
            "mailbox_count",
            "spanish",
            "hotel",
            "zipper",
            "tinted",
        ] {
            assert_eq!(text(column), None, "{column}");
        }
        assert_eq!(
            sensitive("products", "name", "text", 'S'),
            None,
            "a product's name is not a person's"
        );
    }
}
