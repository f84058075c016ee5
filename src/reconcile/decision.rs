//! The managed-resource policy as pure decisions.
//!
//! After Crossplane's managed reconciler, split in two: this module decides
//! what `converge` and `finalize` do next from what the provider reported,
//! the object's annotations and its policies; `managed` executes the step
//! (annotations, provider calls, Events, logs). Nothing here does I/O, so
//! every branch of the policy is covered by a table test in `cargo test
//! --lib` instead of only by integration tests against an apiserver.

use std::collections::BTreeMap;

use crate::api::{
    ANNOTATION_CREATE_PENDING, ANNOTATION_EXTERNAL_NAME, DeletionPolicy, ManagementPolicy,
};
use crate::provider::Observation;

/// Policies of the object being reconciled.
#[derive(Clone, Copy, Debug)]
pub struct Policies {
    pub deletion: DeletionPolicy,
    pub management: ManagementPolicy,
}

/// What `observe` reported, without the payload the decision does not need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presence {
    Missing,
    Exists { up_to_date: bool },
}

impl Presence {
    pub fn of<O>(observation: &Observation<O>) -> Self {
        match observation {
            Observation::Missing => Presence::Missing,
            Observation::Exists { up_to_date, .. } => Presence::Exists {
                up_to_date: *up_to_date,
            },
        }
    }
}

/// Everything [`decide`] looks at.
#[derive(Clone, Copy, Debug)]
pub struct DecisionInput<'a> {
    pub observation: Presence,
    /// `bulkhead.dev/create-pending` is present: a create was started and
    /// its outcome never recorded (a crash, or a failed create).
    pub create_pending: bool,
    /// The `bulkhead.dev/external-name` annotation as it is now.
    pub recorded_external_name: Option<&'a str>,
    /// The external name the spec asks for.
    pub external_name: &'a str,
    pub management: ManagementPolicy,
    /// [`crate::provider::ExternalClient::deterministic_names`].
    pub deterministic_names: bool,
}

impl<'a> DecisionInput<'a> {
    /// Reads the bookkeeping annotations the way `converge` does: pending is
    /// "the key is present" (its value is only a timestamp for humans).
    pub fn from_annotations(
        observation: Presence,
        annotations: &'a BTreeMap<String, String>,
        external_name: &'a str,
        management: ManagementPolicy,
        deterministic_names: bool,
    ) -> Self {
        DecisionInput {
            observation,
            create_pending: annotations.contains_key(ANNOTATION_CREATE_PENDING),
            recorded_external_name: annotations
                .get(ANNOTATION_EXTERNAL_NAME)
                .map(String::as_str),
            external_name,
            management,
            deterministic_names,
        }
    }
}

/// The next step of `converge`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing at the provider.
    Missing(MissingStep),
    /// The external object exists.
    Exists(ExistsStep),
}

/// What to do when the provider has nothing under the external name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissingStep {
    /// ObserveOnly never creates: fail terminally (ExternalObjectMissing).
    RefuseObserveOnly,
    /// A create was started, its result is unknown, and the provider picks
    /// names, so `observe` cannot find what the create may have made:
    /// creating again could make a second object. Fail terminally
    /// (CreatePendingUnresolved) until a human resolves it.
    RefuseCreatePendingUnresolved,
    /// Write create-pending, create, then clear it and record the name.
    Create,
}

/// What to do when the external object exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExistsStep {
    /// Clear create-pending and write the external-name annotation first:
    /// finishes the bookkeeping of a create interrupted by a crash, or
    /// records the name of an adopted object.
    pub record_external_name: bool,
    pub then: Then,
}

/// What follows, once the bookkeeping is done, for an existing object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    /// Drifted and fully managed: converge it with `update`.
    Update,
    /// Up to date: nothing to write.
    UpToDate,
    /// ObserveOnly: report what is there, never write to the provider,
    /// drifted or not.
    ObserveOnly,
}

/// The next step of `converge`, from the observation, the annotations and
/// the policies.
pub fn decide(input: &DecisionInput<'_>) -> Step {
    match input.observation {
        Presence::Missing => Step::Missing(when_missing(input)),
        Presence::Exists { up_to_date } => Step::Exists(when_exists(input, up_to_date)),
    }
}

/// [`decide`] for an observation of `Missing`. The executor calls this (and
/// [`when_exists`]) directly from its match on the observation it holds, so
/// the provider's payload and the step never disagree about which case it is.
pub(super) fn when_missing(input: &DecisionInput<'_>) -> MissingStep {
    // ObserveOnly is checked first: it never creates, pending or not.
    if input.management == ManagementPolicy::ObserveOnly {
        MissingStep::RefuseObserveOnly
    } else if input.create_pending && !input.deterministic_names {
        MissingStep::RefuseCreatePendingUnresolved
    } else {
        // Also after a crash with deterministic names: `observe` looked
        // under the very name the create would have used and found nothing,
        // so the create did not happen and doing it is safe.
        MissingStep::Create
    }
}

/// [`decide`] for an observation of `Exists`.
pub(super) fn when_exists(input: &DecisionInput<'_>, up_to_date: bool) -> ExistsStep {
    let observe_only = input.management == ManagementPolicy::ObserveOnly;
    let bookkeeping_due =
        input.create_pending || input.recorded_external_name != Some(input.external_name);
    // A crash after the create: the object is there, so finish the
    // bookkeeping instead of creating again. Also records the external name
    // of an adopted object. Under ObserveOnly a left-over create-pending is
    // not ours to resolve (bulkhead did not create under this policy), so it
    // is left for a human; the name of an adopted object is still recorded.
    let record_external_name = bookkeeping_due && (!observe_only || !input.create_pending);
    let then = if observe_only {
        Then::ObserveOnly
    } else if up_to_date {
        Then::UpToDate
    } else {
        Then::Update
    };
    ExistsStep {
        record_external_name,
        then,
    }
}

/// What `finalize` does with the external object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeletionStep {
    /// Delete it at the provider.
    Delete,
    /// Leave it in place; `why` is the note's explanation.
    Orphan { why: &'static str },
}

/// Deletes only when bulkhead both may write (Full) and is asked to delete;
/// ObserveOnly wins over deletionPolicy Delete, since it never writes.
pub fn decide_deletion(policies: Policies) -> DeletionStep {
    if policies.deletion == DeletionPolicy::Delete && policies.management == ManagementPolicy::Full
    {
        DeletionStep::Delete
    } else if policies.management == ManagementPolicy::ObserveOnly {
        DeletionStep::Orphan {
            why: "managementPolicy is ObserveOnly",
        }
    } else {
        DeletionStep::Orphan {
            why: "deletionPolicy is Orphan",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ManagementPolicy::{Full, ObserveOnly};

    const NAME: &str = "acme";

    fn exists(up_to_date: bool) -> Presence {
        Presence::Exists { up_to_date }
    }
    fn record(then: Then) -> Step {
        Step::Exists(ExistsStep {
            record_external_name: true,
            then,
        })
    }
    fn keep(then: Then) -> Step {
        Step::Exists(ExistsStep {
            record_external_name: false,
            then,
        })
    }

    /// One case of the converge policy: inputs and the step they must give.
    struct Case {
        name: &'static str,
        observation: Presence,
        create_pending: bool,
        recorded: Option<&'static str>,
        management: ManagementPolicy,
        deterministic_names: bool,
        want: Step,
    }

    #[rustfmt::skip]
    fn cases() -> Vec<Case> {
        vec![
            Case { name: "ObserveOnly, missing: refuse, never create",
                observation: Presence::Missing, create_pending: false, recorded: None,
                management: ObserveOnly, deterministic_names: true,
                want: Step::Missing(MissingStep::RefuseObserveOnly) },
            Case { name: "ObserveOnly, missing, pending left over: still refuse as ObserveOnly",
                observation: Presence::Missing, create_pending: true, recorded: None,
                management: ObserveOnly, deterministic_names: false,
                want: Step::Missing(MissingStep::RefuseObserveOnly) },
            Case { name: "ObserveOnly, exists up to date, name recorded: observe only",
                observation: exists(true), create_pending: false, recorded: Some(NAME),
                management: ObserveOnly, deterministic_names: true,
                want: keep(Then::ObserveOnly) },
            Case { name: "ObserveOnly, exists drifted: no update",
                observation: exists(false), create_pending: false, recorded: Some(NAME),
                management: ObserveOnly, deterministic_names: true,
                want: keep(Then::ObserveOnly) },
            Case { name: "ObserveOnly, adopted (annotation absent): record the name, no update",
                observation: exists(false), create_pending: false, recorded: None,
                management: ObserveOnly, deterministic_names: true,
                want: record(Then::ObserveOnly) },
            Case { name: "ObserveOnly, pending left over: external-name not written",
                observation: exists(true), create_pending: true, recorded: None,
                management: ObserveOnly, deterministic_names: true,
                want: keep(Then::ObserveOnly) },
            Case { name: "pending left over, missing, server-chosen names: refuse",
                observation: Presence::Missing, create_pending: true, recorded: None,
                management: Full, deterministic_names: false,
                want: Step::Missing(MissingStep::RefuseCreatePendingUnresolved) },
            Case { name: "pending left over, missing, deterministic names: create again",
                observation: Presence::Missing, create_pending: true, recorded: None,
                management: Full, deterministic_names: true,
                want: Step::Missing(MissingStep::Create) },
            Case { name: "server-chosen name recorded after the create, exists: nothing to record",
                observation: exists(true), create_pending: false, recorded: Some(NAME),
                management: Full, deterministic_names: false,
                want: keep(Then::UpToDate) },
            Case { name: "pending left over, exists: finish bookkeeping, no second create",
                observation: exists(true), create_pending: true, recorded: None,
                management: Full, deterministic_names: false,
                want: record(Then::UpToDate) },
            Case { name: "pending left over, exists, name already recorded: still clear pending",
                observation: exists(true), create_pending: true, recorded: Some(NAME),
                management: Full, deterministic_names: true,
                want: record(Then::UpToDate) },
            Case { name: "pending left over, exists drifted: bookkeeping, then update",
                observation: exists(false), create_pending: true, recorded: None,
                management: Full, deterministic_names: true,
                want: record(Then::Update) },
            Case { name: "adoption by external name (exists, annotation absent): record it",
                observation: exists(true), create_pending: false, recorded: None,
                management: Full, deterministic_names: true,
                want: record(Then::UpToDate) },
            Case { name: "external name changed in the spec: record the new one",
                observation: exists(true), create_pending: false, recorded: Some("old"),
                management: Full, deterministic_names: true,
                want: record(Then::UpToDate) },
            Case { name: "up to date, annotation present: nothing",
                observation: exists(true), create_pending: false, recorded: Some(NAME),
                management: Full, deterministic_names: true,
                want: keep(Then::UpToDate) },
            Case { name: "drift: update",
                observation: exists(false), create_pending: false, recorded: Some(NAME),
                management: Full, deterministic_names: true,
                want: keep(Then::Update) },
            Case { name: "missing, no pending: create",
                observation: Presence::Missing, create_pending: false, recorded: None,
                management: Full, deterministic_names: true,
                want: Step::Missing(MissingStep::Create) },
            Case { name: "missing, no pending, server-chosen names: create",
                observation: Presence::Missing, create_pending: false, recorded: Some(NAME),
                management: Full, deterministic_names: false,
                want: Step::Missing(MissingStep::Create) },
        ]
    }

    #[test]
    fn converge_policy_table() {
        for case in cases() {
            let input = DecisionInput {
                observation: case.observation,
                create_pending: case.create_pending,
                recorded_external_name: case.recorded,
                external_name: NAME,
                management: case.management,
                deterministic_names: case.deterministic_names,
            };
            assert_eq!(decide(&input), case.want, "case: {}", case.name);
        }
    }

    /// Guards the table itself: a row whose expectation could not tell two
    /// outcomes apart would pass whatever `decide` returned.
    #[test]
    fn converge_policy_table_covers_every_step() {
        let steps: Vec<Step> = cases().iter().map(|c| c.want).collect();
        let mut want = vec![
            Step::Missing(MissingStep::RefuseObserveOnly),
            Step::Missing(MissingStep::RefuseCreatePendingUnresolved),
            Step::Missing(MissingStep::Create),
        ];
        for then in [Then::Update, Then::UpToDate, Then::ObserveOnly] {
            want.push(record(then));
            want.push(keep(then));
        }
        for step in want {
            assert!(steps.contains(&step), "no case expects {step:?}");
        }
    }

    #[test]
    fn deletion_policy_table() {
        use DeletionPolicy::{Delete, Orphan};
        #[rustfmt::skip]
        let cases = [
            ("Delete + Full: delete", Delete, Full, DeletionStep::Delete),
            ("Orphan + Full: orphan", Orphan, Full,
                DeletionStep::Orphan { why: "deletionPolicy is Orphan" }),
            ("Delete + ObserveOnly: orphan, ObserveOnly never writes", Delete, ObserveOnly,
                DeletionStep::Orphan { why: "managementPolicy is ObserveOnly" }),
            ("Orphan + ObserveOnly: orphan, ObserveOnly named as the reason", Orphan, ObserveOnly,
                DeletionStep::Orphan { why: "managementPolicy is ObserveOnly" }),
        ];
        for (name, deletion, management, want) in cases {
            let got = decide_deletion(Policies {
                deletion,
                management,
            });
            assert_eq!(got, want, "case: {name}");
        }
    }

    #[test]
    fn annotations_are_read_by_key() {
        let mut annotations = BTreeMap::new();
        let input =
            DecisionInput::from_annotations(Presence::Missing, &annotations, NAME, Full, true);
        assert!(!input.create_pending);
        assert_eq!(input.recorded_external_name, None);

        // Pending is the key's presence; its value (a timestamp) is never parsed.
        annotations.insert(ANNOTATION_CREATE_PENDING.to_string(), String::new());
        annotations.insert(ANNOTATION_EXTERNAL_NAME.to_string(), "other".to_string());
        annotations.insert("bulkhead.dev/paused".to_string(), "true".to_string());
        let input =
            DecisionInput::from_annotations(exists(true), &annotations, NAME, ObserveOnly, false);
        assert!(input.create_pending);
        assert_eq!(input.recorded_external_name, Some("other"));
        assert_eq!(input.external_name, NAME);
        assert_eq!(input.management, ObserveOnly);
        assert!(!input.deterministic_names);
        assert_eq!(input.observation, exists(true));
    }

    #[test]
    fn presence_drops_only_the_payload() {
        assert_eq!(Presence::of(&Observation::<()>::Missing), Presence::Missing);
        for up_to_date in [true, false] {
            let o = Observation::Exists {
                up_to_date,
                drift: vec!["x".to_string()],
                readiness: crate::provider::Readiness::ready("up"),
                observed: (),
            };
            assert_eq!(Presence::of(&o), exists(up_to_date));
        }
    }
}
