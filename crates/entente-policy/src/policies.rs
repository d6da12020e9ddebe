//! Loading policies: parsing, naming, validating against the schema, and slicing by
//! (action, namespace) so that a decision evaluates only the policies that could apply.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::LazyLock;

use cedar_policy::{
    ActionConstraint, AuthorizationError, Authorizer, Entities, EntityUid, PrincipalConstraint,
    Request, ResourceConstraint, ValidationMode, Validator,
};
use entente_types::text::is_deceptive;
use miette::Diagnostic;

use crate::bounds;
use crate::decision::{Decision, PolicyError, PolicyId, Reason};
use crate::grants::{
    DEFAULT_APPROVALS, DEFAULT_MAX_DURATION_MS, GrantDefinition, MAX_APPROVALS,
    MAX_GRANT_DURATION_MS, format_duration, is_valid_grant_name, parse_duration,
};
use crate::rate::PolicyRate;
use crate::request::{Action, ContextMemo, Facts, NO_SEGMENT, Resource, Subject};
use crate::schema;

/// Which segment owns each namespace that is not owned by the segment of the same name.
pub(crate) type Owners = HashMap<String, String>;

/// A validated, sliced set of policies. Build one with [`PolicySet::builder`]; it never
/// exists unvalidated.
pub struct PolicySet {
    policies: Vec<PolicyInfo>,
    index: HashMap<String, usize>,
    owners: Owners,
    slices: Vec<Slice>,
    slicing: bool,
    authorizer: Authorizer,
    grants: BTreeMap<String, GrantDefinition>,
    /// The same set without its `@hold` forbids, if it has any: what decides whether a
    /// publish they deny would be allowed once approved.
    lifted: Option<Box<PolicySet>>,
    /// The actions some forbid's action scope admits ([`PolicySet::may_forbid`]).
    forbidding: Vec<Action>,
}

/// One loaded policy, for explanations and the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyInfo {
    /// Its ID.
    pub id: PolicyId,
    /// Permit or forbid.
    pub effect: Effect,
    /// The name of the source it came from (a file name, or a name given with the text).
    pub source: String,
    /// Where it starts in that source, 1-based.
    pub line: u32,
    /// The column it starts at, 1-based.
    pub column: u32,
    /// Its text as written.
    pub text: String,
    /// Whether it carries `@cross_segment`.
    pub cross_segment: bool,
    /// The grant that opens it, from `@grant("…")`.
    pub grant: Option<String>,
    /// The attributes of `context` its conditions read (`context.risk`, `context has risk`),
    /// sorted, each once: a host that does not supply one can refuse the policy rather than
    /// let it decide on a default.
    pub context_read: Vec<String>,
    /// Whether it names a `Role` entity anywhere (scope or conditions).
    pub names_roles: bool,
    /// Whether it carries `@hold`: a forbid on `publish` that approvals lift. A publish
    /// denied by such forbids alone is held for approval rather than refused
    /// ([`PolicySet::holds`]).
    pub hold: bool,
    /// Its `@rate` (with `@burst`): how often each principal may do what it allows. Only
    /// permits carry one; the host charges every determining permit's
    /// ([`PolicySet::rated`]).
    pub rate: Option<PolicyRate>,
    /// Whether its action scope is open (`action` alone): a permit so written never allows an
    /// administrative action, which must be named.
    pub open_action: bool,
}

/// A policy's effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// `permit`.
    Permit,
    /// `forbid`.
    Forbid,
}

/// Collects policy sources and options, then builds a [`PolicySet`].
#[derive(Debug, Clone)]
pub struct PolicySetBuilder {
    sources: Vec<(String, String)>,
    owners: Owners,
    slicing: bool,
    max_policies: usize,
}

/// The most policy entries the sliced sets may hold together (each a policy in one slice's
/// set): past it, a set is built without slicing, which decides the same and holds each
/// policy at most once per slice. Slicing copies the policies that pin no channel into every
/// channel's and namespace's set, so a few thousand of each would otherwise make millions.
pub(crate) const MAX_SLICED_ENTRIES: usize = 1 << 18;

/// Why a set of policies was refused. Whatever the error, nothing was loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A policy file could not be read.
    #[error("cannot read policy file `{path}`: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The text is not Cedar.
    #[error("policy syntax error: {}", Problems(.0))]
    Syntax(Vec<Problem>),
    /// The policies parse but do not fit Entente's schema (unknown entity types, attributes
    /// or actions, wrong types, an action applied to a resource it does not take, …).
    #[error("policies do not match the schema: {}", Problems(.0))]
    Invalid(Vec<Problem>),
    /// The policies break one of Entente's own rules (duplicate IDs, templates,
    /// `@cross_segment` misuse, namespace owners, grant annotations, rates).
    #[error("policies break Entente's rules: {}", Problems(.0))]
    Rules(Vec<Problem>),
    /// Our own schema does not load: a bug in this crate.
    #[error("internal error: {0}")]
    Internal(String),
}

/// One problem found while loading, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The source (file) name.
    pub source: String,
    /// 1-based line and column in the source, when known.
    pub location: Option<(u32, u32)>,
    /// The policy concerned, when known.
    pub policy: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// Policies for one (action, tier) pair: a set per channel named by some policy's scope
/// (`resource == Channel::"…"`), a set per namespace (first token) named by some scope, and
/// the policies that pin neither, for every other resource.
struct Slice {
    by_channel: HashMap<Box<str>, cedar_policy::PolicySet>,
    by_namespace: HashMap<Box<str>, cedar_policy::PolicySet>,
    rest: cedar_policy::PolicySet,
}

/// What a policy's resource scope pins.
enum Pin {
    /// Nothing we slice on.
    None,
    /// Channels whose first token is this.
    Namespace(String),
    /// This one channel (or pattern) name.
    Channel(String),
}

const CROSS_SEGMENT: &str = "cross_segment";
const GRANT: &str = "grant";
const HOLD: &str = "hold";
const APPROVALS: &str = "approvals";
const MAX_DURATION: &str = "max_duration";
const RATE: &str = "rate";
const BURST: &str = "burst";
const ID: &str = "id";

/// Every annotation the loader reads: any other is refused (a misspelled `@approvals` would
/// load, and a grant meant for two people's approval be given by one).
const ANNOTATIONS: [&str; 8] = [
    ID,
    GRANT,
    APPROVALS,
    MAX_DURATION,
    RATE,
    BURST,
    HOLD,
    CROSS_SEGMENT,
];

/// The annotations that are flags: present or not, with no value (`@cross_segment("false")`
/// would otherwise be one).
const FLAGS: [&str; 2] = [HOLD, CROSS_SEGMENT];

// === impl PolicySet ===

impl PolicySet {
    /// A builder with no sources, slicing on.
    pub fn builder() -> PolicySetBuilder {
        PolicySetBuilder {
            sources: Vec::new(),
            owners: Owners::new(),
            slicing: true,
            max_policies: usize::MAX,
        }
    }

    /// One source's policies, named `name` in errors and IDs.
    pub fn parse(name: &str, text: &str) -> Result<Self, LoadError> {
        Self::builder().source(name, text).build()
    }

    /// The empty set: everything is denied.
    pub fn empty() -> Self {
        Self {
            policies: Vec::new(),
            index: HashMap::new(),
            owners: Owners::new(),
            slices: Vec::new(),
            slicing: true,
            authorizer: Authorizer::new(),
            grants: BTreeMap::new(),
            lifted: None,
            forbidding: Vec::new(),
        }
    }

    /// Whether some forbid of the set may apply to `action`: its action scope admits it.
    /// When none does, a decision on `action` can only be a permit or the default deny,
    /// whatever the principal, resource and context.
    pub fn may_forbid(&self, action: Action) -> bool {
        self.forbidding.contains(&action)
    }

    /// The policies, in load order.
    pub fn policies(&self) -> &[PolicyInfo] {
        &self.policies
    }

    /// The policy with this ID.
    pub fn policy(&self, id: &str) -> Option<&PolicyInfo> {
        self.index.get(id).and_then(|&i| self.policies.get(i))
    }

    /// The permits whose action scope is open, in load order: none of them allows an
    /// administrative action.
    pub fn open_permits(&self) -> impl Iterator<Item = &PolicyInfo> {
        self.policies
            .iter()
            .filter(|p| p.effect == Effect::Permit && p.open_action)
    }

    /// The policies that carry a `@rate`, with it, in load order.
    pub fn rated(&self) -> impl Iterator<Item = (&PolicyId, PolicyRate)> {
        self.policies
            .iter()
            .filter_map(|p| p.rate.map(|rate| (&p.id, rate)))
    }

    /// How many policies there are.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The grants the policies define (`@grant`), by name.
    pub fn grant_definitions(&self) -> impl Iterator<Item = &GrantDefinition> {
        self.grants.values()
    }

    /// The definition of grant `name`, if a policy declares it.
    pub fn grant_definition(&self, name: &str) -> Option<&GrantDefinition> {
        self.grants.get(name)
    }

    /// The segment owning channels of `namespace` (its first token).
    pub fn namespace_owner<'a>(&'a self, namespace: &'a str) -> &'a str {
        crate::request::channel_segment(namespace, &self.owners)
    }

    /// Decides, uncached, with epoch 0 in the decision (an [`Engine`](crate::Engine) puts its
    /// own).
    pub fn decide(
        &self,
        subject: &Subject,
        action: Action,
        resource: &Resource<'_>,
        facts: &Facts,
        now_ms: u64,
    ) -> Decision {
        self.decide_at(0, subject, action, resource, facts, now_ms, None)
    }

    /// Whether `decision` (made on this set) is a denial by `@hold` forbids alone: what the
    /// hub holds for approval instead of refusing. A forbid without `@hold`, a forbid that
    /// failed to evaluate, or the lack of a permit is a plain denial.
    pub fn holds(&self, decision: &Decision) -> bool {
        decision.reason == Reason::Forbid
            && !decision.policies.is_empty()
            && decision
                .policies
                .iter()
                .all(|id| self.policy(id.as_str()).is_some_and(|p| p.hold))
    }

    /// Whether the publish `decision` denied would be allowed with its `@hold` forbids lifted:
    /// decided again on this set without them. `false` when the set has none.
    pub fn allowed_once_approved(
        &self,
        subject: &Subject,
        resource: &Resource<'_>,
        facts: &Facts,
        now_ms: u64,
    ) -> bool {
        self.lifted.as_ref().is_some_and(|lifted| {
            lifted
                .decide(subject, Action::Publish, resource, facts, now_ms)
                .allowed
        })
    }

    /// Decides and explains the decision in words, for `entente policy check`.
    pub fn explain(
        &self,
        subject: &Subject,
        action: Action,
        resource: &Resource<'_>,
        facts: &Facts,
        now_ms: u64,
    ) -> String {
        let decision = self.decide(subject, action, resource, facts, now_ms);
        self.explain_decision(subject, action, resource, &decision)
    }

    /// Explains a decision made earlier on this set.
    pub fn explain_decision(
        &self,
        subject: &Subject,
        action: Action,
        resource: &Resource<'_>,
        decision: &Decision,
    ) -> String {
        crate::explain::explain(self, subject, action, resource, decision)
    }

    /// Decides at `epoch`, reusing the context in `memo` when it can.
    #[expect(
        clippy::too_many_arguments,
        reason = "the request's parts, kept apart to avoid copies"
    )]
    pub(crate) fn decide_at(
        &self,
        epoch: u64,
        subject: &Subject,
        action: Action,
        resource: &Resource<'_>,
        facts: &Facts,
        now_ms: u64,
        memo: Option<&mut ContextMemo>,
    ) -> Decision {
        let segment = resource.segment(&self.owners);
        let cross = subject.segment().is_some_and(|own| own != segment);
        let Some(policies) = self.slice(action, cross, resource) else {
            return self.finish(epoch, cross, None);
        };
        let principal = match subject.entity() {
            Ok(entity) => entity.clone(),
            Err(e) => return Decision::bad_request(e.to_owned(), cross, epoch),
        };
        let resource_uid = crate::request::uid(resource.type_name(), resource.name());
        let mut entities = vec![principal];
        if &resource_uid != subject.uid() {
            match resource.entity(&self.owners) {
                Ok(entity) => entities.push(entity),
                Err(e) => return Decision::bad_request(e, cross, epoch),
            }
        }
        let context = match memo {
            Some(memo) => memo.context(epoch, facts, now_ms, cross),
            None => facts.context(now_ms, cross),
        };
        let context = match context {
            Ok(context) => context,
            Err(e) => return Decision::bad_request(e, cross, epoch),
        };
        let entities = match Entities::from_entities(entities, None) {
            Ok(entities) => entities,
            Err(e) => return Decision::bad_request(e.to_string(), cross, epoch),
        };
        let request = match Request::new(
            subject.uid().clone(),
            action_uid(action),
            resource_uid,
            context,
            None,
        ) {
            Ok(request) => request,
            Err(e) => return Decision::bad_request(e.to_string(), cross, epoch),
        };
        let response = self.authorizer.is_authorized(&request, policies, &entities);
        self.finish(epoch, cross, Some(&response))
    }

    /// The Cedar set to evaluate for this request.
    fn slice(
        &self,
        action: Action,
        cross: bool,
        resource: &Resource<'_>,
    ) -> Option<&cedar_policy::PolicySet> {
        let slice = self.slices.get(slice_index(action, cross))?;
        let Some(namespace) = resource.namespace().filter(|_| self.slicing) else {
            return Some(&slice.rest);
        };
        Some(
            slice
                .by_channel
                .get(resource.name())
                .or_else(|| slice.by_namespace.get(namespace))
                .unwrap_or(&slice.rest),
        )
    }

    fn finish(
        &self,
        epoch: u64,
        cross: bool,
        response: Option<&cedar_policy::Response>,
    ) -> Decision {
        let mut decision = Decision {
            allowed: false,
            reason: Reason::NoPermit,
            policies: Vec::new(),
            errors: Vec::new(),
            cross_segment: cross,
            epoch,
        };
        let Some(response) = response else {
            return decision;
        };
        let mut failed_forbids = Vec::new();
        for error in response.diagnostics().errors() {
            let AuthorizationError::PolicyEvaluationError(error) = error;
            let id = self.id_of(error.policy_id().as_ref());
            if self.effect_of(id.as_str()) == Some(Effect::Forbid) {
                failed_forbids.push(id.clone());
            }
            decision.errors.push(PolicyError {
                policy: id,
                message: error.inner().to_string(),
            });
        }
        let mut determining: Vec<PolicyId> = response
            .diagnostics()
            .reason()
            .map(|id| self.id_of(id.as_ref()))
            .collect();
        determining.sort();
        failed_forbids.sort();
        match response.decision() {
            _ if !failed_forbids.is_empty() => {
                decision.reason = Reason::ForbidFailed;
                decision.policies = failed_forbids;
            }
            cedar_policy::Decision::Allow => {
                decision.allowed = true;
                decision.reason = Reason::Permit;
                decision.policies = determining;
            }
            cedar_policy::Decision::Deny if !determining.is_empty() => {
                decision.reason = Reason::Forbid;
                decision.policies = determining;
            }
            cedar_policy::Decision::Deny => {}
        }
        decision
    }

    fn id_of(&self, cedar_id: &str) -> PolicyId {
        self.index
            .get(cedar_id)
            .and_then(|&i| self.policies.get(i))
            .map_or_else(|| PolicyId::new(cedar_id), |info| info.id.clone())
    }

    fn effect_of(&self, id: &str) -> Option<Effect> {
        self.policy(id).map(|info| info.effect)
    }
}

impl Default for PolicySet {
    fn default() -> Self {
        Self::empty()
    }
}

impl fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicySet")
            .field("policies", &self.policies.len())
            .field("owners", &self.owners)
            .field("slicing", &self.slicing)
            .finish_non_exhaustive()
    }
}

// === impl PolicySetBuilder ===

impl PolicySetBuilder {
    /// Adds policies in Cedar syntax. `name` names the source in errors and in the IDs of
    /// policies without `@id`.
    pub fn source(mut self, name: impl Into<String>, text: impl Into<String>) -> Self {
        self.sources.push((name.into(), text.into()));
        self
    }

    /// Adds a policy file; its path (as given) names it.
    pub fn file(self, path: impl AsRef<Path>) -> Result<Self, LoadError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: name.clone(),
            source,
        })?;
        Ok(self.source(name, text))
    }

    /// Declares that channels of `namespace` belong to `segment` (by default a namespace
    /// belongs to the segment of the same name).
    pub fn namespace_owner(
        mut self,
        namespace: impl Into<String>,
        segment: impl Into<String>,
    ) -> Self {
        self.owners.insert(namespace.into(), segment.into());
        self
    }

    /// Turns slicing by (action, namespace) on or off (on by default). Off, every decision
    /// evaluates every policy; decisions are the same either way.
    pub fn slicing(mut self, on: bool) -> Self {
        self.slicing = on;
        self
    }

    /// Refuses more than `max` policies (the base's included) once parsed, before they are
    /// validated or sliced.
    pub fn max_policies(mut self, max: usize) -> Self {
        self.max_policies = max;
        self
    }

    /// Parses, names, validates and slices the policies.
    ///
    /// Cedar parses and validates on a thread of its own with a large stack, after a scan
    /// that bounds how deep and how long each policy is (see [`MAX_NESTING`],
    /// [`MAX_OPERATORS`] and [`MAX_EXPRESSION_DEPTH`]): no source, however hostile, can
    /// exhaust a stack, and every policy loaded can be decided on an ordinary thread.
    ///
    /// [`MAX_NESTING`]: crate::MAX_NESTING
    /// [`MAX_OPERATORS`]: crate::MAX_OPERATORS
    /// [`MAX_EXPRESSION_DEPTH`]: crate::MAX_EXPRESSION_DEPTH
    pub fn build(self) -> Result<PolicySet, LoadError> {
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("policy-load".to_owned())
                .stack_size(bounds::LOAD_STACK)
                .spawn_scoped(scope, move || self.build_here())
                .map_err(|e| LoadError::Internal(format!("cannot start the policy loader: {e}")))?
                .join()
                .map_err(|_| LoadError::Internal("the policy loader panicked".to_owned()))?
        })
    }

    /// [`Self::build`] on the calling thread.
    fn build_here(self) -> Result<PolicySet, LoadError> {
        let schema = schema::schema().map_err(LoadError::Internal)?;
        check_owners(&self.owners)?;

        let mut syntax = Vec::new();
        let mut rules = Vec::new();
        let mut parsed: Vec<Parsed> = Vec::new();
        for (source_index, (name, text)) in self.sources.iter().enumerate() {
            if let Some(problem) = deceptive_source_name(name) {
                rules.push(problem);
                continue;
            }
            if let Some(problem) = bounds::scan(name, text) {
                rules.push(problem);
                continue;
            }
            match cedar_policy::PolicySet::from_str(text) {
                Err(errors) => {
                    for error in errors.iter() {
                        syntax.push(Problem::from_diagnostic(name, text, None, error));
                    }
                }
                Ok(set) => split(source_index, name, text, &set, &mut parsed, &mut rules),
            }
        }
        if !syntax.is_empty() {
            return Err(LoadError::Syntax(syntax));
        }
        if parsed.len() > self.max_policies {
            return Err(LoadError::Rules(vec![Problem {
                source: String::new(),
                location: None,
                policy: None,
                message: format!("{} policies: at most {}", parsed.len(), self.max_policies),
            }]));
        }

        let mut index = HashMap::new();
        for (i, p) in parsed.iter().enumerate() {
            if let Some(&first) = index.get(p.info.id.as_str()) {
                let first: &Parsed = match parsed.get(first) {
                    Some(first) => first,
                    None => continue,
                };
                rules.push(p.problem(format!(
                    "duplicate policy ID `{}` (first used at {}:{})",
                    p.info.id, first.info.source, first.info.line
                )));
            } else {
                index.insert(p.info.id.as_str().to_owned(), i);
            }
            if p.info.cross_segment
                && let Some(message) = cross_segment_misuse(p)
            {
                rules.push(p.problem(message));
            }
            if let Some(message) = open_to_humans(p) {
                rules.push(p.problem(message));
            }
            if p.info.hold
                && let Some(message) = hold_misuse(p)
            {
                rules.push(p.problem(message));
            }
        }
        let grants = collect_grants(&parsed, &mut rules);
        if !rules.is_empty() {
            return Err(LoadError::Rules(rules));
        }

        let all = cedar_policy::PolicySet::from_policies(parsed.iter().map(|p| p.policy.clone()))
            .map_err(|e| LoadError::Internal(e.to_string()))?;
        let result = Validator::new(schema.clone()).validate(&all, ValidationMode::Strict);
        let mut invalid = Vec::new();
        let errors = result
            .validation_errors()
            .map(|e| (e.policy_id(), e as &dyn Diagnostic));
        let warnings = result
            .validation_warnings()
            .map(|w| (w.policy_id(), w as &dyn Diagnostic));
        for (policy_id, diagnostic) in errors.chain(warnings) {
            let policy_id: &str = policy_id.as_ref();
            let p = index.get(policy_id).and_then(|&i| parsed.get(i));
            let (name, text) = p
                .and_then(|p| self.sources.get(p.source_index))
                .map_or(("?", ""), |(n, t)| (n.as_str(), t.as_str()));
            invalid.push(Problem::from_diagnostic(
                name,
                text,
                Some(policy_id),
                diagnostic,
            ));
        }
        if !invalid.is_empty() {
            return Err(LoadError::Invalid(invalid));
        }

        let slices = slice_all(&parsed, self.slicing)?;
        let forbidding = |parsed: &[Parsed]| -> Vec<Action> {
            Action::ALL
                .into_iter()
                .filter(|&action| {
                    parsed
                        .iter()
                        .any(|p| p.info.effect == Effect::Forbid && applies_to(&p.policy, action))
                })
                .collect()
        };
        let lifted = if parsed.iter().any(|p| p.info.hold) {
            let kept: Vec<Parsed> = parsed
                .iter()
                .filter(|p| !p.info.hold)
                .map(|p| Parsed {
                    source_index: p.source_index,
                    info: p.info.clone(),
                    policy: p.policy.clone(),
                })
                .collect();
            let index = kept
                .iter()
                .enumerate()
                .map(|(i, p)| (p.info.id.as_str().to_owned(), i))
                .collect();
            Some(Box::new(PolicySet {
                slices: slice_all(&kept, self.slicing)?,
                forbidding: forbidding(&kept),
                policies: kept.into_iter().map(|p| p.info).collect(),
                index,
                owners: self.owners.clone(),
                slicing: self.slicing,
                authorizer: Authorizer::new(),
                grants: grants.clone(),
                lifted: None,
            }))
        } else {
            None
        };
        Ok(PolicySet {
            forbidding: forbidding(&parsed),
            policies: parsed.into_iter().map(|p| p.info).collect(),
            index,
            owners: self.owners,
            slices,
            slicing: self.slicing,
            authorizer: Authorizer::new(),
            grants,
            lifted,
        })
    }
}

// === loading helpers ===

/// A policy parsed from a source, renamed to its Entente ID.
struct Parsed {
    source_index: usize,
    info: PolicyInfo,
    policy: cedar_policy::Policy,
}

impl Parsed {
    fn problem(&self, message: String) -> Problem {
        Problem {
            source: self.info.source.clone(),
            location: Some((self.info.line, self.info.column)),
            policy: Some(self.info.id.to_string()),
            message,
        }
    }
}

/// Splits a parsed source into named policies, in source order. Cedar names the n-th
/// policy or template of a text `policy<n>`.
fn split(
    source_index: usize,
    name: &str,
    text: &str,
    set: &cedar_policy::PolicySet,
    parsed: &mut Vec<Parsed>,
    rules: &mut Vec<Problem>,
) {
    let total = set.num_of_policies() + set.num_of_templates();
    let mut cursor = Cursor::new(text);
    for n in 0..total {
        let cedar_id = cedar_policy::PolicyId::new(format!("policy{n}"));
        if let Some(template) = set.template(&cedar_id) {
            let (line, column) = cursor.locate(&template.to_cedar());
            rules.push(Problem {
                source: name.to_owned(),
                location: Some((line, column)),
                policy: Some(format!("{name}#{n}")),
                message:
                    "templates (`?principal`, `?resource`) are not supported: write a static policy"
                        .to_owned(),
            });
            continue;
        }
        let Some(policy) = set.policy(&cedar_id) else {
            continue;
        };
        let written = policy.to_cedar().unwrap_or_default();
        let (line, column) = cursor.locate(&written);
        let id = policy
            .annotation(ID)
            .map_or_else(|| format!("{name}#{n}"), str::to_owned);
        if let Some(c) = id.chars().find(|&c| is_deceptive(c)) {
            rules.push(Problem {
                source: name.to_owned(),
                location: Some((line, column)),
                policy: Some(id.escape_debug().to_string()),
                message: format!(
                    "a policy ID may not hold a control or invisible formatting character \
                     (U+{:04X})",
                    u32::from(c)
                ),
            });
            continue;
        }
        let mut misread = false;
        for (key, value) in policy.annotations() {
            let message = if !ANNOTATIONS.contains(&key) {
                let lower = key.to_ascii_lowercase();
                let nearest = ANNOTATIONS
                    .iter()
                    .map(|known| (strsim::levenshtein(known, &lower), known))
                    .min()
                    .filter(|(distance, _)| *distance <= 3);
                let hint =
                    nearest.map_or_else(String::new, |(_, n)| format!(" (did you mean `@{n}`?)"));
                Some(format!(
                    "unknown annotation `@{}`{hint}: Entente reads only {}",
                    key.escape_debug(),
                    ANNOTATIONS.map(|a| format!("`@{a}`")).join(", ")
                ))
            } else if FLAGS.contains(&key) && !value.is_empty() {
                Some(format!(
                    "`@{key}` takes no value (it is written `@{key}` alone, and is on when present)"
                ))
            } else {
                None
            };
            if let Some(message) = message {
                misread = true;
                rules.push(Problem {
                    source: name.to_owned(),
                    location: Some((line, column)),
                    policy: Some(id.clone()),
                    message,
                });
            }
        }
        if misread {
            continue;
        }
        let reads = reads(policy);
        if let Some(message) = bounds::too_deep(reads.json_depth) {
            rules.push(Problem {
                source: name.to_owned(),
                location: Some((line, column)),
                policy: Some(id.clone()),
                message,
            });
        }
        let effect = match policy.effect() {
            cedar_policy::Effect::Permit => Effect::Permit,
            cedar_policy::Effect::Forbid => Effect::Forbid,
        };
        let rate = match rate_of(policy, effect) {
            Ok(rate) => rate,
            Err(message) => {
                rules.push(Problem {
                    source: name.to_owned(),
                    location: Some((line, column)),
                    policy: Some(id.clone()),
                    message,
                });
                None
            }
        };
        parsed.push(Parsed {
            source_index,
            policy: policy.new_id(cedar_policy::PolicyId::new(&id)),
            info: PolicyInfo {
                id: PolicyId::new(&id),
                effect,
                source: name.to_owned(),
                line,
                column,
                text: written,
                cross_segment: policy.annotation(CROSS_SEGMENT).is_some(),
                grant: policy.annotation(GRANT).map(str::to_owned),
                context_read: reads.context,
                names_roles: reads.roles,
                hold: policy.annotation(HOLD).is_some(),
                rate,
                open_action: matches!(policy.action_constraint(), ActionConstraint::Any),
            },
        });
    }
}

/// The problem with a source name holding a control or invisible formatting character (a
/// line break, a terminal escape, a bidirectional override): names and IDs are printed to
/// people (`entente policy show`, decisions, audit records), where one could pass for another.
/// The name is given escaped.
fn deceptive_source_name(name: &str) -> Option<Problem> {
    let c = name.chars().find(|&c| is_deceptive(c))?;
    Some(Problem {
        source: name.escape_debug().to_string(),
        location: None,
        policy: None,
        message: format!(
            "a source name may not hold a control or invisible formatting character (U+{:04X})",
            u32::from(c)
        ),
    })
}

/// Walks a source forward, finding each policy's text and keeping the line and column
/// count as it goes (so a large file is scanned once).
struct Cursor<'a> {
    text: &'a str,
    offset: usize,
    line: u32,
    column: u32,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            text,
            offset: 0,
            line: 1,
            column: 1,
        }
    }

    /// Finds `written` from the cursor on, returns its 1-based line and column, and moves
    /// past it; `(0, 0)` if it is not found.
    fn locate(&mut self, written: &str) -> (u32, u32) {
        let Some(at) = self
            .text
            .get(self.offset..)
            .and_then(|rest| rest.find(written))
            .map(|at| at + self.offset)
        else {
            return (0, 0);
        };
        self.advance(at);
        let found = (self.line, self.column);
        self.advance(at + written.len());
        found
    }

    fn advance(&mut self, to: usize) {
        for c in self.text.get(self.offset..to).unwrap_or_default().chars() {
            if c == '\n' {
                self.line = self.line.saturating_add(1);
                self.column = 1;
            } else {
                self.column = self.column.saturating_add(1);
            }
        }
        self.offset = to;
    }
}

/// 1-based line and column (in characters) of byte `offset`.
pub(crate) fn line_column(text: &str, offset: usize) -> (u32, u32) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (
        u32::try_from(line).unwrap_or(u32::MAX),
        u32::try_from(column).unwrap_or(u32::MAX),
    )
}

/// Why a `@cross_segment` policy is refused, if it is: it must be a permit, and its scope must
/// name the resource (`resource == Channel::"…"`, `resource in Namespace::"…"`), so that
/// only named channels are opened between segments.
fn cross_segment_misuse(p: &Parsed) -> Option<String> {
    if p.info.effect == Effect::Forbid {
        return Some(
            "`@cross_segment` is for permits: a forbid applies across segments anyway".to_owned(),
        );
    }
    match p.policy.resource_constraint() {
        ResourceConstraint::Eq(uid)
        | ResourceConstraint::In(uid)
        | ResourceConstraint::IsIn(_, uid) => opens_everything(&uid),
        ResourceConstraint::Any | ResourceConstraint::Is(_) => Some(
            "a `@cross_segment` permit must name what it opens in its scope, e.g. `resource == Channel::\"b.results\"` or `resource in Namespace::\"shared\"`"
                .to_owned(),
        ),
    }
}

/// Why a permit is refused for opening everything to humans, if it is: a permit that names
/// neither its principal nor its resource in its scope. For agents the segment rule confines
/// it to their own segment, but humans are in no segment, so it would open every resource of
/// its actions to every enrolled human. (Conditions are not read: scope the policy.)
fn open_to_humans(p: &Parsed) -> Option<String> {
    let open_principal = matches!(p.policy.principal_constraint(), PrincipalConstraint::Any);
    let open_resource = matches!(
        p.policy.resource_constraint(),
        ResourceConstraint::Any | ResourceConstraint::Is(_)
    );
    (p.info.effect == Effect::Permit && open_principal && open_resource).then(|| {
        "a permit naming neither its principal nor its resource opens every resource to every human (humans are in no segment, so the segment rule does not confine them): scope the principal (`principal is Agent` keeps agents to their own segment; or a segment, a role, a principal) or name the resource".to_owned()
    })
}

/// A policy's `@rate` and `@burst`: none without `@rate`; an error for a bad value, for
/// `@burst` alone, and for a rate on a forbid (a rate caps what a permit allows).
fn rate_of(policy: &cedar_policy::Policy, effect: Effect) -> Result<Option<PolicyRate>, String> {
    let burst = policy.annotation(BURST);
    let Some(rate) = policy.annotation(RATE) else {
        return match burst {
            Some(_) => Err(
                "`@burst` goes with a `@rate`, e.g. `@rate(\"10/s\") @burst(\"20\")`".to_owned(),
            ),
            None => Ok(None),
        };
    };
    if effect == Effect::Forbid {
        return Err("`@rate` caps what a permit allows; a forbid allows nothing to cap".to_owned());
    }
    PolicyRate::parse(rate, burst).map(Some)
}

/// Why a `@hold` policy is refused, if it is: it must be a forbid on exactly
/// `Action::"publish"` whose conditions read `context.approvals` or `context.approvers`, so
/// that approvals can lift it.
fn hold_misuse(p: &Parsed) -> Option<String> {
    if p.info.effect != Effect::Forbid {
        return Some(
            "`@hold` is for forbids that approvals lift, e.g. `unless { context.approvals >= 2 }`"
                .to_owned(),
        );
    }
    let publish = action_uid(Action::Publish);
    if !matches!(p.policy.action_constraint(), ActionConstraint::Eq(uid) if uid == publish) {
        return Some(
            "a `@hold` forbid holds published messages: its scope must be `action == Action::\"publish\"`"
                .to_owned(),
        );
    }
    let reads_approvals = p
        .info
        .context_read
        .iter()
        .any(|attr| attr == "approvals" || attr == "approvers");
    (!reads_approvals).then(|| {
        "a `@hold` forbid must read `context.approvals` or `context.approvers`, or no approval could ever lift it".to_owned()
    })
}

/// Why the entity a `@cross_segment` scope names opens more than named channels, if it does:
/// `Segment::"*"` (the segment of humans' system channels and of patterns starting with a
/// wildcard, which no agent is in) and a channel or pattern whose first token is a wildcard
/// (`Channel::">"`, `Channel::"*.results"`) would open every segment's traffic at once.
fn opens_everything(uid: &cedar_policy::EntityUid) -> Option<String> {
    let id = uid.id().unescaped();
    let type_name = uid.type_name().to_string();
    let wide = match type_name.as_str() {
        "Segment" => id == NO_SEGMENT,
        "Channel" | "Namespace" => matches!(id.split('.').next(), Some("*" | ">") | None),
        _ => false,
    };
    wide.then(|| {
        format!(
            "a `@cross_segment` permit must name what it opens: `{type_name}::\"{}\"` stands for every segment's channels",
            id.escape_debug()
        )
    })
}

/// Collects the grant definitions of `@grant`, `@approvals` and `@max_duration`, adding a
/// problem for each bad value, each `@approvals`/`@max_duration` without `@grant`, each
/// `@grant` whose policy never tests `context.grants.contains("<name>")`, and each definition
/// that disagrees with an earlier one of the same name.
fn collect_grants(
    parsed: &[Parsed],
    rules: &mut Vec<Problem>,
) -> BTreeMap<String, GrantDefinition> {
    let mut definitions: BTreeMap<String, GrantDefinition> = BTreeMap::new();
    let mut first_at: HashMap<String, String> = HashMap::new();
    for p in parsed {
        let approvals_text = p.policy.annotation(APPROVALS);
        let max_duration = p.policy.annotation(MAX_DURATION);
        let Some(name) = p.policy.annotation(GRANT) else {
            if approvals_text.is_some() || max_duration.is_some() {
                rules.push(p.problem(
                    "`@approvals` and `@max_duration` describe a grant: add `@grant(\"<name>\")`"
                        .to_owned(),
                ));
            }
            continue;
        };
        if !is_valid_grant_name(name) {
            rules.push(p.problem(format!(
                "`@grant(\"{}\")`: a grant name is 1 to 64 characters of [A-Za-z0-9._:-]",
                name.escape_debug()
            )));
            continue;
        }
        let approvals = match approvals_text {
            None => Some(DEFAULT_APPROVALS),
            Some(text) => text.parse::<u32>().ok().filter(|n| {
                text.bytes().all(|b| b.is_ascii_digit()) && (1..=MAX_APPROVALS).contains(n)
            }),
        };
        let Some(approvals) = approvals else {
            rules.push(p.problem(format!(
                "`@approvals(\"{}\")`: write a whole number from 1 to {MAX_APPROVALS}",
                approvals_text.unwrap_or_default().escape_debug()
            )));
            continue;
        };
        let max_duration_ms = match max_duration {
            None => Some(DEFAULT_MAX_DURATION_MS),
            Some(text) => parse_duration(text)
                .ok()
                .filter(|&ms| ms > 0 && ms <= MAX_GRANT_DURATION_MS),
        };
        let Some(max_duration_ms) = max_duration_ms else {
            rules.push(p.problem(format!(
                "`@max_duration(\"{}\")`: write a duration above zero and at most {}, e.g. `30m`, `1h30m`, `7d`",
                max_duration.unwrap_or_default().escape_debug(),
                format_duration(MAX_GRANT_DURATION_MS)
            )));
            continue;
        };
        if !tests_grant(&p.policy, name) {
            rules.push(p.problem(format!(
                "`@grant(\"{name}\")` but the policy never tests `context.grants.contains(\"{name}\")`"
            )));
            continue;
        }
        let here = format!("{}:{}:{}", p.info.source, p.info.line, p.info.column);
        match definitions.get_mut(name) {
            None => {
                first_at.insert(name.to_owned(), here);
                definitions.insert(
                    name.to_owned(),
                    GrantDefinition {
                        name: name.to_owned(),
                        approvals,
                        max_duration_ms,
                        policies: vec![p.info.id.clone()],
                    },
                );
            }
            Some(first) if first.approvals == approvals && first.max_duration_ms == max_duration_ms => {
                first.policies.push(p.info.id.clone());
            }
            Some(first) => rules.push(p.problem(format!(
                "grant `{name}` is defined with @approvals(\"{approvals}\") @max_duration(\"{}\") here but with @approvals(\"{}\") @max_duration(\"{}\") at {}: every policy of one grant must agree",
                format_duration(max_duration_ms),
                first.approvals,
                format_duration(first.max_duration_ms),
                first_at.get(name).map_or("?", String::as_str),
            ))),
        }
    }
    // A grant opens every policy that tests its name: each says so, so that what a grant
    // opens is shown with it (`explain`), under the rules its `@grant` policies set.
    for p in parsed {
        let own = p.policy.annotation(GRANT);
        let (tested, other_reads) = grant_reads(&p.policy);
        if other_reads {
            rules.push(p.problem(
                "the policy reads `context.grants` other than as `context.grants.contains(\"NAME\")` \
                 with the name written out (`containsAny`, `isEmpty`, a comparison): which grants \
                 open it could not be shown; test each grant by name"
                    .to_owned(),
            ));
        }
        for name in tested {
            if own != Some(name.as_str())
                && let Some(definition) = definitions.get(&name)
            {
                rules.push(p.problem(format!(
                    "the policy tests grant `{name}` without `@grant(\"{name}\")`: grant \
                     `{name}` (defined by `{}`) would open it unshown; add the annotation, with \
                     the grant's `@approvals` and `@max_duration` (a policy opened by several \
                     grants is written once for each)",
                    definition.policies.first().map_or("?", |id| id.as_str())
                )));
            }
        }
    }
    definitions
}

/// Whether the policy's conditions contain `context.grants.contains("<name>")` (also written
/// `context["grants"].contains("<name>")`), found in Cedar's JSON form of the policy.
fn tests_grant(policy: &cedar_policy::Policy, name: &str) -> bool {
    grant_reads(policy).0.iter().any(|n| n == name)
}

/// The names the policy's conditions test with `context.grants.contains("<name>")`, and
/// whether they read `context.grants` any other way (`containsAny`, `isEmpty`, a comparison,
/// `contains` of a value not written out).
fn grant_reads(policy: &cedar_policy::Policy) -> (Vec<String>, bool) {
    let Ok(json) = policy.to_json() else {
        return (Vec::new(), false);
    };
    let grants = serde_json::json!({ ".": { "left": { "Var": "context" }, "attr": "grants" } });
    let (mut names, mut tests, mut reads) = (Vec::new(), 0usize, 0usize);
    let mut stack = vec![&json];
    while let Some(value) = stack.pop() {
        match value {
            serde_json::Value::Object(map) => {
                if value == &grants {
                    reads = reads.saturating_add(1);
                }
                if let Some(serde_json::Value::Object(contains)) = map.get("contains")
                    && contains.get("left") == Some(&grants)
                    && let Some(serde_json::Value::String(name)) =
                        contains.get("right").and_then(|r| r.get("Value"))
                {
                    tests = tests.saturating_add(1);
                    if !names.contains(name) {
                        names.push(name.clone());
                    }
                }
                stack.extend(map.values());
            }
            serde_json::Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    (names, reads > tests)
}

/// What a policy reads besides principal, action and resource.
#[derive(Default)]
struct Reads {
    context: Vec<String>,
    roles: bool,
    /// How deep the JSON form nests, for [`bounds::too_deep`].
    json_depth: usize,
}

/// The `context` attributes a policy reads and whether it names a role, found in Cedar's JSON
/// form of the policy: `.` and `has` on `Var: context`, and entity references of type `Role`.
fn reads(policy: &cedar_policy::Policy) -> Reads {
    let Ok(json) = policy.to_json() else {
        return Reads::default();
    };
    let mut reads = Reads::default();
    let mut stack = vec![(&json, 1)];
    while let Some((value, depth)) = stack.pop() {
        reads.json_depth = reads.json_depth.max(depth);
        match value {
            serde_json::Value::Object(map) => {
                for access in [".", "has"] {
                    if let Some(serde_json::Value::Object(on)) = map.get(access)
                        && on.get("left") == Some(&serde_json::json!({ "Var": "context" }))
                        && let Some(serde_json::Value::String(attr)) = on.get("attr")
                    {
                        reads.context.push(attr.clone());
                    }
                }
                if map.get("type") == Some(&serde_json::json!("Role")) && map.contains_key("id") {
                    reads.roles = true;
                }
                stack.extend(map.values().map(|v| (v, depth + 1)));
            }
            serde_json::Value::Array(items) => stack.extend(items.iter().map(|v| (v, depth + 1))),
            _ => {}
        }
    }
    reads.context.sort_unstable();
    reads.context.dedup();
    reads
}

/// Namespace names are single channel tokens; segment names are 1 to 64 of `[A-Za-z0-9_-]`.
fn check_owners(owners: &Owners) -> Result<(), LoadError> {
    let token = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':'))
    };
    let segment = |s: &str| {
        (1..=64).contains(&s.len())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
    };
    let problems: Vec<Problem> = owners
        .iter()
        .filter(|(ns, seg)| !token(ns) || !segment(seg))
        .map(|(ns, seg)| Problem {
            source: "namespace owners".to_owned(),
            location: None,
            policy: None,
            message: format!(
                "`{}` → `{}`: a namespace is one channel token and a segment 1 to 64 of [A-Za-z0-9_-]",
                ns.escape_debug(),
                seg.escape_debug()
            ),
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(LoadError::Rules(problems))
    }
}

// === slicing ===

fn slice_index(action: Action, cross: bool) -> usize {
    action.index() * 2 + usize::from(cross)
}

/// Builds the slices. A policy goes into the slice of every action its scope allows
/// (`action` unconstrained: all of them), for every tier it applies to (forbids and
/// `@cross_segment` permits: both; other permits: same-segment only). Within a slice, a
/// policy pinned to one channel is in that channel's set only; one pinned to a namespace is in
/// that namespace's set and in the sets of its channels; one pinned to neither is in every
/// set. A request evaluates the set of its channel, else of its namespace, else the rest.
fn slice_all(parsed: &[Parsed], slicing: bool) -> Result<Vec<Slice>, LoadError> {
    if slicing && sliced_entries(parsed) > MAX_SLICED_ENTRIES {
        return slice_all(parsed, false);
    }
    let pins: Vec<Pin> = parsed
        .iter()
        .map(|p| if slicing { pin(&p.policy) } else { Pin::None })
        .collect();
    let set_of = |indices: &mut Vec<usize>| {
        indices.sort_unstable();
        cedar_policy::PolicySet::from_policies(
            indices
                .iter()
                .filter_map(|&i| parsed.get(i))
                .map(|p| p.policy.clone()),
        )
        .map_err(|e| LoadError::Internal(e.to_string()))
    };
    let mut slices = Vec::new();
    for action in Action::ALL {
        for cross in [false, true] {
            let mut rest = Vec::new();
            let mut namespaces: HashMap<&str, Vec<usize>> = HashMap::new();
            let mut channels: HashMap<&str, Vec<usize>> = HashMap::new();
            for ((i, p), pin) in parsed.iter().enumerate().zip(&pins) {
                let tier_ok = !cross || p.info.effect == Effect::Forbid || p.info.cross_segment;
                if !tier_ok
                    || (slicing && !applies_to(&p.policy, action))
                    || grants_unnamed(p, action)
                {
                    continue;
                }
                match pin {
                    Pin::None => rest.push(i),
                    Pin::Namespace(ns) => namespaces.entry(ns).or_default().push(i),
                    Pin::Channel(name) => channels.entry(name).or_default().push(i),
                }
            }
            let mut by_channel = HashMap::new();
            for (name, mut indices) in channels {
                let ns = name.split('.').next().unwrap_or_default();
                indices.extend(namespaces.get(ns).into_iter().flatten());
                indices.extend_from_slice(&rest);
                by_channel.insert(Box::from(name), set_of(&mut indices)?);
            }
            let mut by_namespace = HashMap::new();
            for (ns, mut indices) in namespaces {
                indices.extend_from_slice(&rest);
                by_namespace.insert(Box::from(ns), set_of(&mut indices)?);
            }
            slices.push(Slice {
                by_channel,
                by_namespace,
                rest: set_of(&mut rest)?,
            });
        }
    }
    Ok(slices)
}

/// How many policy entries the sliced sets of `parsed` would hold together, counted as
/// [`slice_all`] fills them, without building any.
fn sliced_entries(parsed: &[Parsed]) -> usize {
    let pins: Vec<Pin> = parsed.iter().map(|p| pin(&p.policy)).collect();
    let mut total = 0usize;
    for action in Action::ALL {
        for cross in [false, true] {
            let (mut rest, mut namespaces, mut channels) = (0usize, HashMap::new(), Vec::new());
            for (p, pin) in parsed.iter().zip(&pins) {
                let tier_ok = !cross || p.info.effect == Effect::Forbid || p.info.cross_segment;
                if !tier_ok || !applies_to(&p.policy, action) || grants_unnamed(p, action) {
                    continue;
                }
                match pin {
                    Pin::None => rest += 1,
                    Pin::Namespace(ns) => *namespaces.entry(ns.as_str()).or_insert(0usize) += 1,
                    Pin::Channel(name) => channels.push(name.as_str()),
                }
            }
            let mut by_channel: HashMap<&str, usize> = HashMap::new();
            for name in channels {
                *by_channel.entry(name).or_insert(0) += 1;
            }
            let in_namespace = |name: &str| {
                let ns = name.split('.').next().unwrap_or_default();
                namespaces.get(ns).copied().unwrap_or(0)
            };
            total = by_channel
                .iter()
                .map(|(name, n)| n + in_namespace(name) + rest)
                .chain(namespaces.values().map(|n| n + rest))
                .fold(total.saturating_add(rest), usize::saturating_add);
        }
    }
    total
}

/// Whether `p` would grant the administrative `action` without naming it: a permit whose
/// action scope is open. It is left out of that action's sets, so that a wide permit, such as
/// `permit (principal is Agent, action, resource);`, never lets agents make join tokens for
/// their peers (and become them), revoke them, grant, or approve held messages and requests.
fn grants_unnamed(p: &Parsed, action: Action) -> bool {
    p.info.effect == Effect::Permit && action.is_administrative() && p.info.open_action
}

/// Whether the policy's action scope admits `action`.
fn applies_to(policy: &cedar_policy::Policy, action: Action) -> bool {
    let is = |uid: &EntityUid| uid.id().unescaped() == action.name();
    match policy.action_constraint() {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(uid) => is(&uid),
        ActionConstraint::In(uids) => uids.iter().any(is),
    }
}

/// What the resource scope pins: `resource == Channel::"a.b"` (or `in`, since a channel has
/// no descendants) one channel; `resource in Namespace::"a.b"` the namespace `a`.
fn pin(policy: &cedar_policy::Policy) -> Pin {
    let uid = match policy.resource_constraint() {
        ResourceConstraint::Eq(uid)
        | ResourceConstraint::In(uid)
        | ResourceConstraint::IsIn(_, uid) => uid,
        ResourceConstraint::Any | ResourceConstraint::Is(_) => return Pin::None,
    };
    let name = uid.id().unescaped();
    match uid.type_name().to_string().as_str() {
        "Channel" => Pin::Channel(name.to_owned()),
        "Namespace" => Pin::Namespace(name.split('.').next().unwrap_or_default().to_owned()),
        _ => Pin::None,
    }
}

// === impl Problem ===

impl Problem {
    fn from_diagnostic(
        source: &str,
        text: &str,
        policy: Option<&str>,
        diagnostic: &dyn Diagnostic,
    ) -> Self {
        let offset = diagnostic
            .labels()
            .and_then(|mut labels| labels.next())
            .map(|label| label.offset());
        let mut message = diagnostic.to_string();
        // Cedar starts validation messages with the policy, which `Display` shows already.
        if let Some(rest) =
            policy.and_then(|id| message.strip_prefix(&format!("for policy `{id}`, ")))
        {
            message = rest.to_owned();
        }
        if let Some(help) = diagnostic.help() {
            message = format!("{message} ({help})");
        }
        Self {
            source: source.to_owned(),
            location: offset.map(|offset| line_column(text, offset)),
            policy: policy.map(str::to_owned),
            message,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)?;
        if let Some((line, column)) = self.location {
            write!(f, ":{line}:{column}")?;
        }
        f.write_str(": ")?;
        if let Some(policy) = &self.policy {
            write!(f, "policy `{policy}`: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Displays problems separated by `; `.
struct Problems<'a>(&'a [Problem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl LoadError {
    /// The problems found, for listing one per line (empty for `Read` and `Internal`).
    pub fn problems(&self) -> &[Problem] {
        match self {
            LoadError::Syntax(p) | LoadError::Invalid(p) | LoadError::Rules(p) => p,
            LoadError::Read { .. } | LoadError::Internal(_) => &[],
        }
    }
}

fn action_uid(action: Action) -> EntityUid {
    static UIDS: LazyLock<Vec<EntityUid>> =
        LazyLock::new(|| Action::ALL.iter().map(|a| a.uid()).collect());
    UIDS.get(action.index())
        .cloned()
        .unwrap_or_else(|| action.uid())
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]

    use super::*;

    #[test]
    fn the_cursor_counts_lines_and_columns() {
        let text = "a;\n  \u{e9}b;\nc;";
        let mut cursor = Cursor::new(text);
        assert_eq!(cursor.locate("a;"), (1, 1));
        assert_eq!(cursor.locate("b;"), (2, 4));
        assert_eq!(cursor.locate("a;"), (0, 0));
        assert_eq!(cursor.locate("c;"), (3, 1));
    }

    /// The entries of `set`'s sliced sets, counted from the sets built.
    fn entries(set: &PolicySet) -> usize {
        set.slices
            .iter()
            .map(|slice| {
                slice.rest.policies().count()
                    + slice
                        .by_channel
                        .values()
                        .chain(slice.by_namespace.values())
                        .map(|s| s.policies().count())
                        .sum::<usize>()
            })
            .sum()
    }

    fn forbids(pinned: usize, unpinned: usize) -> String {
        let mut text = String::new();
        for i in 0..pinned {
            text.push_str(&format!(
                "forbid (principal, action, resource == Channel::\"c{i}.x\");\n"
            ));
        }
        for i in 0..unpinned {
            text.push_str(&format!(
                "forbid (principal, action, resource) when {{ context.risk > {} }};\n",
                100 + i
            ));
        }
        text
    }

    /// Slicing copies unpinned policies into every pinned set: the count made beforehand is
    /// the count built, and past the budget the set is built unsliced (each policy once per
    /// slice) instead of by the million.
    #[test]
    fn sliced_sets_are_counted_before_they_are_built_and_bounded() {
        let small = PolicySet::builder()
            .source("p", forbids(3, 4))
            .build()
            .unwrap();
        let parsed_small = entries(&small);
        assert!(parsed_small > 20 * 7, "{parsed_small}: sliced");
        let big = PolicySet::builder()
            .source("p", forbids(300, 300))
            .build()
            .unwrap();
        assert!(big.slices.iter().all(|s| s.by_channel.is_empty()));
        assert_eq!(entries(&big), 20 * 600);
        // The same text, counted without building the sets.
        let set = cedar_policy::PolicySet::from_str(&forbids(3, 4)).unwrap();
        let (mut parsed, mut rules) = (Vec::new(), Vec::new());
        split(0, "p", &forbids(3, 4), &set, &mut parsed, &mut rules);
        assert!(rules.is_empty());
        assert_eq!(sliced_entries(&parsed), parsed_small);
    }

    #[test]
    fn more_policies_than_allowed_are_refused_before_they_are_validated() {
        let error = PolicySet::builder()
            .source("p", forbids(0, 10))
            .max_policies(9)
            .build()
            .unwrap_err();
        assert!(
            error.to_string().contains("10 policies: at most 9"),
            "{error}"
        );
    }

    /// The actions a forbid's scope admits, as written (`action`, `==`, `in [..]`), in the set
    /// and in the set without its `@hold` forbids; permits count for none.
    #[test]
    fn the_actions_a_forbid_may_apply_to_are_those_its_scope_admits() {
        let permits = r#"
            @id("p") permit (principal is Agent, action, resource);"#;
        let forbids = r#"
            @id("held") @hold
            forbid (principal, action == Action::"publish", resource in Namespace::"pay")
            unless { context.approvals >= 2 };
            @id("some")
            forbid (principal, action in [Action::"request", Action::"reply"], resource);"#;
        let may = |text: &str| {
            let set = PolicySet::parse("p", text).unwrap();
            let lifted = set.lifted.as_ref().map(|lifted| {
                Action::ALL
                    .into_iter()
                    .filter(|&a| lifted.may_forbid(a))
                    .collect::<Vec<_>>()
            });
            let all: Vec<_> = Action::ALL
                .into_iter()
                .filter(|&a| set.may_forbid(a))
                .collect();
            (all, lifted)
        };
        assert_eq!(may(permits), (vec![], None));
        assert_eq!(
            may(&format!("{permits}{forbids}")),
            (
                vec![Action::Publish, Action::Request, Action::Reply],
                Some(vec![Action::Request, Action::Reply])
            )
        );
        let everything =
            r#"@id("all") forbid (principal, action, resource) when { context.risk > 90 };"#;
        assert_eq!(may(everything), (Action::ALL.to_vec(), None));
        assert!(!PolicySet::empty().may_forbid(Action::Subscribe));
    }

    #[test]
    fn line_columns() {
        let text = "ab\ncd\n\u{e9}x";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 4), (2, 2));
        assert_eq!(line_column(text, 8), (3, 2));
    }
}
