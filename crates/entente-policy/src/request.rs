//! What a decision is about: who ([`Subject`]), doing what ([`Action`]), to what
//! ([`Resource`]), knowing what ([`Facts`]); and how each becomes a Cedar entity or context.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};

use cedar_policy::{Context, Entity, EntityId, EntityTypeName, EntityUid, RestrictedExpression};
use entente_types::{AgentId, Channel, ChannelPattern, HumanId, Principal};

use crate::policies::Owners;

/// The segment ID given to resources that belong to no segment: humans, the hub itself,
/// humans' system channels and patterns whose first token is a wildcard. No agent is in it
/// (segment names never contain `*`), so for every agent such a resource is in another
/// segment.
pub const NO_SEGMENT: &str = "*";

/// How many kinds of resource [`Resource::kind`] tells apart.
pub(crate) const RESOURCE_KINDS: usize = 5;

/// An action of the schema (`Action::"publish"` and so on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Publish to a channel.
    Publish,
    /// Subscribe to a channel pattern.
    Subscribe,
    /// Send a direct message (to a `_direct.…` channel).
    Direct,
    /// Send a request.
    Request,
    /// Send a reply.
    Reply,
    /// Create a join token for an agent or a segment.
    Enroll,
    /// Give a time-bound permission.
    Grant,
    /// Approve a held action.
    Approve,
    /// Revoke a grant or a credential.
    Revoke,
    /// Use the administration API.
    Admin,
}

/// The thing acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource<'a> {
    /// A channel (publish, direct, request, reply, approve, admin).
    Channel(&'a Channel),
    /// A subscription pattern (subscribe). A literal pattern is the same resource as the
    /// channel of that name.
    Pattern(&'a ChannelPattern),
    /// An agent (enroll, grant, revoke, approve, admin).
    Agent(&'a AgentId),
    /// A human (enroll, grant, revoke, approve, admin). Humans belong to no segment.
    Human(&'a HumanId),
    /// A segment, by name (enroll, grant, revoke, admin).
    Segment(&'a str),
    /// The hub itself, by its name (admin: loading, showing and checking its policies). A hub
    /// belongs to no segment ([`NO_SEGMENT`]): an agent needs a `@cross_segment` permit that
    /// names it.
    Hub(&'a str),
}

/// The principal of a connection, with the roles the registry gives it, turned into a Cedar
/// entity once so that each decision only builds the resource and the context. Clones share
/// the entity.
#[derive(Clone)]
pub struct Subject {
    principal: Principal,
    roles: Vec<String>,
    uid: EntityUid,
    entity: Arc<Result<Entity, String>>,
}

/// The facts a decision may depend on besides the principal, action and resource: the
/// Cedar `context` (docs/POLICY.md). The current time is passed separately.
///
/// A cached decision is reused while the policy epoch is unchanged, whatever these facts
/// are: whoever changes a principal's risk, grants or approvals bumps the epoch
/// ([`Engine::bump_epoch`](crate::Engine::bump_epoch)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// Risk score, 0 to 100 (higher values are clamped to 100).
    pub risk: u8,
    /// The principal's grants. Those expired at decision time are left out of the context;
    /// a cached decision expires no later than the earliest of the others.
    pub grants: Vec<ActiveGrant>,
    /// How many distinct principals other than the requester approved.
    pub approvals: u32,
    /// Their SPIFFE IDs.
    pub approvers: Vec<String>,
    /// Whether the connection's TLS session was resumed.
    pub tls_resumed: bool,
    /// The deciding hub's name.
    pub hub: String,
}

/// A grant the principal holds: its ID and when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveGrant {
    /// The grant's ID, as policies see it in `context.grants`.
    pub id: String,
    /// When it stops counting, Unix milliseconds (exclusive).
    pub not_after_ms: u64,
}

/// An action name that is not in the schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown action `{0}` (expected one of publish, subscribe, direct, request, reply, enroll, grant, approve, revoke, admin)"
)]
pub struct UnknownAction(String);

// === impl Action ===

impl Action {
    /// Every action, in schema order.
    pub const ALL: [Action; 10] = [
        Action::Publish,
        Action::Subscribe,
        Action::Direct,
        Action::Request,
        Action::Reply,
        Action::Enroll,
        Action::Grant,
        Action::Approve,
        Action::Revoke,
        Action::Admin,
    ];

    /// Whether the action administers (`enroll`, `grant`, `approve`, `revoke`, `admin`): a
    /// permit grants it only if its action scope names it (an open `action` does not).
    pub fn is_administrative(self) -> bool {
        matches!(
            self,
            Action::Enroll | Action::Grant | Action::Approve | Action::Revoke | Action::Admin
        )
    }

    /// The action's ID in the schema, e.g. `publish`.
    pub fn name(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
            Action::Direct => "direct",
            Action::Request => "request",
            Action::Reply => "reply",
            Action::Enroll => "enroll",
            Action::Grant => "grant",
            Action::Approve => "approve",
            Action::Revoke => "revoke",
            Action::Admin => "admin",
        }
    }

    /// Position in [`Action::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|action| action.name() == name)
    }

    pub(crate) fn uid(self) -> EntityUid {
        uid("Action", self.name())
    }
}

impl FromStr for Action {
    type Err = UnknownAction;

    fn from_str(s: &str) -> Result<Self, UnknownAction> {
        Self::from_name(s).ok_or_else(|| UnknownAction(s.chars().take(32).collect()))
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// === impl Resource ===

impl<'a> Resource<'a> {
    /// The resource of a principal: [`Resource::Agent`] or [`Resource::Human`].
    pub fn principal(principal: &'a Principal) -> Self {
        match principal {
            Principal::Agent(agent) => Resource::Agent(agent),
            Principal::Human(human) => Resource::Human(human),
        }
    }

    /// The resource's Cedar entity ID: the channel name or pattern, the agent's or human's
    /// SPIFFE ID, the segment name, or the hub's name.
    pub fn name(&self) -> &str {
        match self {
            Resource::Channel(channel) => channel.as_str(),
            Resource::Pattern(pattern) => pattern.as_str(),
            Resource::Agent(agent) => agent.as_str(),
            Resource::Human(human) => human.as_str(),
            Resource::Segment(segment) => segment,
            Resource::Hub(hub) => hub,
        }
    }

    /// The Cedar entity type.
    pub fn type_name(&self) -> &'static str {
        match self {
            Resource::Channel(_) | Resource::Pattern(_) => "Channel",
            Resource::Agent(_) => "Agent",
            Resource::Human(_) => "Human",
            Resource::Segment(_) => "Segment",
            Resource::Hub(_) => "Hub",
        }
    }

    /// 0 for channels and patterns, 1 for agents, 2 for segments, 3 for humans, 4 for hubs
    /// (below [`RESOURCE_KINDS`]): part of cache keys.
    pub(crate) fn kind(&self) -> usize {
        match self {
            Resource::Channel(_) | Resource::Pattern(_) => 0,
            Resource::Agent(_) => 1,
            Resource::Segment(_) => 2,
            Resource::Human(_) => 3,
            Resource::Hub(_) => 4,
        }
    }

    /// The first token of a channel or pattern, which selects the policy slice; `None` for
    /// other resources.
    pub(crate) fn namespace(&self) -> Option<&str> {
        match self {
            Resource::Channel(_) | Resource::Pattern(_) => self.name().split('.').next(),
            Resource::Agent(_) | Resource::Human(_) | Resource::Segment(_) | Resource::Hub(_) => {
                None
            }
        }
    }

    /// The segment the resource belongs to ([`NO_SEGMENT`] for a human or a hub).
    pub(crate) fn segment<'b>(&'b self, owners: &'b Owners) -> &'b str {
        match self {
            Resource::Channel(_) | Resource::Pattern(_) => channel_segment(self.name(), owners),
            Resource::Agent(agent) => agent.segment(),
            Resource::Human(_) | Resource::Hub(_) => NO_SEGMENT,
            Resource::Segment(segment) => segment,
        }
    }

    /// The Cedar entity of the resource, as docs/POLICY.md describes it.
    pub(crate) fn entity(&self, owners: &Owners) -> Result<Entity, String> {
        let uid = uid(self.type_name(), self.name());
        match self {
            Resource::Channel(_) | Resource::Pattern(_) => channel_entity(uid, self.name(), owners),
            Resource::Agent(agent) => agent_entity(uid, agent, &[]),
            Resource::Human(human) => human_entity(uid, human, &[]),
            Resource::Segment(_) | Resource::Hub(_) => {
                Ok(Entity::new_no_attrs(uid, Default::default()))
            }
        }
    }
}

impl fmt::Display for Resource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}::{:?}", self.type_name(), self.name())
    }
}

// === impl Subject ===

impl Subject {
    /// The subject for `principal` holding `roles` (`Role::"<role>"` parents).
    pub fn new<R: Into<String>>(principal: Principal, roles: impl IntoIterator<Item = R>) -> Self {
        let roles: Vec<String> = roles.into_iter().map(Into::into).collect();
        let (uid, entity) = match &principal {
            Principal::Agent(agent) => {
                let uid = uid("Agent", agent.as_str());
                let entity = agent_entity(uid.clone(), agent, &roles);
                (uid, entity)
            }
            Principal::Human(human) => {
                let uid = uid("Human", human.as_str());
                let entity = human_entity(uid.clone(), human, &roles);
                (uid, entity)
            }
        };
        Self {
            principal,
            roles,
            uid,
            entity: Arc::new(entity),
        }
    }

    /// The principal.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// Its roles.
    pub fn roles(&self) -> &[String] {
        &self.roles
    }

    /// The agent's segment; `None` for a human.
    pub fn segment(&self) -> Option<&str> {
        match &self.principal {
            Principal::Agent(agent) => Some(agent.segment()),
            Principal::Human(_) => None,
        }
    }

    pub(crate) fn uid(&self) -> &EntityUid {
        &self.uid
    }

    pub(crate) fn entity(&self) -> Result<&Entity, &str> {
        self.entity.as_ref().as_ref().map_err(String::as_str)
    }
}

impl fmt::Debug for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subject")
            .field("principal", &self.principal.as_str())
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

// === impl Facts ===

impl Facts {
    /// The Cedar context for a decision at `now_ms`.
    pub(crate) fn context(&self, now_ms: u64, cross_segment: bool) -> Result<Context, String> {
        let now_s = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
        let grants = self
            .grants
            .iter()
            .filter(|grant| grant.not_after_ms > now_ms)
            .map(|grant| RestrictedExpression::new_string(grant.id.clone()));
        let approvers = self
            .approvers
            .iter()
            .map(|id| RestrictedExpression::new_string(id.clone()));
        Context::from_pairs([
            ("now".to_owned(), RestrictedExpression::new_long(now_s)),
            (
                "risk".to_owned(),
                RestrictedExpression::new_long(i64::from(self.risk.min(100))),
            ),
            ("grants".to_owned(), RestrictedExpression::new_set(grants)),
            (
                "approvals".to_owned(),
                RestrictedExpression::new_long(i64::from(self.approvals)),
            ),
            (
                "approvers".to_owned(),
                RestrictedExpression::new_set(approvers),
            ),
            (
                "cross_segment".to_owned(),
                RestrictedExpression::new_bool(cross_segment),
            ),
            (
                "tls_resumed".to_owned(),
                RestrictedExpression::new_bool(self.tls_resumed),
            ),
            (
                "hub".to_owned(),
                RestrictedExpression::new_string(self.hub.clone()),
            ),
        ])
        .map_err(|e| e.to_string())
    }

    /// The earliest end of a grant still active at `now_ms`.
    pub(crate) fn earliest_grant_end(&self, now_ms: u64) -> Option<u64> {
        self.grants
            .iter()
            .map(|grant| grant.not_after_ms)
            .filter(|&end| end > now_ms)
            .min()
    }
}

// === impl ContextMemo ===

/// The last context a connection built, reused while it cannot differ: same epoch (facts
/// changes bump it), same segment relation, same second, and no grant ending in between.
#[derive(Debug, Default)]
pub(crate) struct ContextMemo {
    last: Option<Memoized>,
}

#[derive(Debug)]
struct Memoized {
    epoch: u64,
    cross: bool,
    from_ms: u64,
    until_ms: u64,
    context: Context,
}

impl ContextMemo {
    pub(crate) fn context(
        &mut self,
        epoch: u64,
        facts: &Facts,
        now_ms: u64,
        cross: bool,
    ) -> Result<Context, String> {
        if let Some(m) = &self.last
            && m.epoch == epoch
            && m.cross == cross
            && (m.from_ms..m.until_ms).contains(&now_ms)
        {
            return Ok(m.context.clone());
        }
        let context = facts.context(now_ms, cross)?;
        let next_second = (now_ms / 1000).saturating_add(1).saturating_mul(1000);
        self.last = Some(Memoized {
            epoch,
            cross,
            from_ms: now_ms,
            until_ms: facts
                .earliest_grant_end(now_ms)
                .map_or(next_second, |end| end.min(next_second)),
            context: context.clone(),
        });
        Ok(context)
    }
}

// === entities ===

/// `Type::"id"`. Type names are ours; an entity ID may be any string.
pub(crate) fn uid(type_name: &str, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(type_name_of(type_name), EntityId::new(id))
}

/// The schema's type names, parsed once (Cedar parses a name with its full grammar).
static TYPE_NAMES: LazyLock<[(&str, EntityTypeName); 8]> = LazyLock::new(|| {
    [
        "Agent",
        "Human",
        "Segment",
        "Hub",
        "Role",
        "Namespace",
        "Channel",
        "Action",
    ]
    .map(|name| (name, parse_type_name(name)))
});

fn type_name_of(name: &str) -> EntityTypeName {
    TYPE_NAMES
        .iter()
        .find(|(known, _)| *known == name)
        .map_or_else(|| parse_type_name(name), |(_, parsed)| parsed.clone())
}

#[expect(
    clippy::expect_used,
    reason = "only called with the identifiers of our schema, which always parse (tested)"
)]
fn parse_type_name(name: &str) -> EntityTypeName {
    EntityTypeName::from_str(name).expect("a type name of the schema")
}

fn agent_entity(uid: EntityUid, agent: &AgentId, roles: &[String]) -> Result<Entity, String> {
    let attrs = HashMap::from([
        (
            "segment".to_owned(),
            RestrictedExpression::new_entity_uid(self::uid("Segment", agent.segment())),
        ),
        (
            "name".to_owned(),
            RestrictedExpression::new_string(agent.name().to_owned()),
        ),
    ]);
    let parents = std::iter::once(self::uid("Segment", agent.segment()))
        .chain(roles.iter().map(|role| self::uid("Role", role)))
        .collect();
    Entity::new(uid, attrs, parents).map_err(|e| e.to_string())
}

fn human_entity(uid: EntityUid, human: &HumanId, roles: &[String]) -> Result<Entity, String> {
    let attrs = HashMap::from([(
        "name".to_owned(),
        RestrictedExpression::new_string(human.name().to_owned()),
    )]);
    let parents = roles.iter().map(|role| self::uid("Role", role)).collect();
    Entity::new(uid, attrs, parents).map_err(|e| e.to_string())
}

fn channel_entity(uid: EntityUid, name: &str, owners: &Owners) -> Result<Entity, String> {
    let first = name.split('.').next().unwrap_or_default();
    let wildcard = name.split('.').any(is_wildcard);
    let segment = self::uid("Segment", channel_segment(name, owners));
    let mut parents: std::collections::HashSet<EntityUid> = namespaces(name)
        .map(|prefix| self::uid("Namespace", prefix))
        .collect();
    parents.insert(segment.clone());
    let attrs = HashMap::from([
        (
            "name".to_owned(),
            RestrictedExpression::new_string(name.to_owned()),
        ),
        (
            "namespace".to_owned(),
            RestrictedExpression::new_string(first.to_owned()),
        ),
        (
            "system".to_owned(),
            RestrictedExpression::new_bool(first.starts_with('_')),
        ),
        (
            "wildcard".to_owned(),
            RestrictedExpression::new_bool(wildcard),
        ),
        (
            "segment".to_owned(),
            RestrictedExpression::new_entity_uid(segment),
        ),
    ]);
    Entity::new(uid, attrs, parents).map_err(|e| e.to_string())
}

/// The namespaces a channel or pattern is in: each proper prefix made of literal tokens.
/// `orders.eu.created` → `orders`, `orders.eu`; `orders.*.x` → `orders`; `orders.>` →
/// `orders`; `orders` → none; `>` → none.
pub fn namespaces(name: &str) -> impl Iterator<Item = &str> {
    name.match_indices('.').map_while(move |(end, _)| {
        let prefix = name.get(..end)?;
        (!prefix.split('.').any(is_wildcard)).then_some(prefix)
    })
}

/// The segment a channel or pattern belongs to (docs/POLICY.md, "Segments").
pub(crate) fn channel_segment<'a>(name: &'a str, owners: &'a Owners) -> &'a str {
    let mut tokens = name.split('.');
    let first = tokens.next().unwrap_or_default();
    if let Some(owner) = owners.get(first) {
        return owner;
    }
    if first == entente_types::namespace::DIRECT_PREFIX
        || first == entente_types::namespace::REPLY_PREFIX
    {
        return match tokens.next() {
            Some(segment) if !is_wildcard(segment) && !segment.contains(':') => segment,
            _ => NO_SEGMENT,
        };
    }
    if first.starts_with('_') || is_wildcard(first) {
        return NO_SEGMENT;
    }
    first
}

fn is_wildcard(token: &str) -> bool {
    token == "*" || token == ">"
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
    fn a_subject_and_its_clones_share_one_entity() {
        let principal = Principal::parse("spiffe://example.org/agent/shop/alice").unwrap();
        let subject = Subject::new(principal, ["buyer"]);
        let clone = subject.clone();
        assert!(Arc::ptr_eq(&subject.entity, &clone.entity));
        assert_eq!(&clone.entity().unwrap().uid(), subject.uid());
    }

    #[test]
    fn namespaces_are_literal_proper_prefixes() {
        let cases: [(&str, &[&str]); 6] = [
            ("orders.eu.created", &["orders", "orders.eu"]),
            ("orders.*.x", &["orders"]),
            ("orders.>", &["orders"]),
            ("orders", &[]),
            (">", &[]),
            ("*.eu.x", &[]),
        ];
        for (name, expected) in cases {
            assert_eq!(namespaces(name).collect::<Vec<_>>(), expected, "{name}");
        }
    }

    #[test]
    fn channel_segments() {
        let owners = Owners::from([("shared".to_owned(), "b".to_owned())]);
        for (name, segment) in [
            ("research.results", "research"),
            ("shared.results", "b"),
            ("_direct.shop.alice", "shop"),
            ("_reply.shop.alice.r1", "shop"),
            ("_direct.human:ops", NO_SEGMENT),
            ("_direct.*.x", NO_SEGMENT),
            ("_sys.x", NO_SEGMENT),
            (">", NO_SEGMENT),
            ("*.results", NO_SEGMENT),
            ("orders.>", "orders"),
        ] {
            assert_eq!(channel_segment(name, &owners), segment, "{name}");
        }
    }

    #[test]
    fn the_hub_is_an_entity_of_its_own_in_no_segment() {
        let owners = Owners::from([("hub".to_owned(), "hub".to_owned())]);
        let hub = Resource::Hub("hub");
        assert_eq!(hub.segment(&owners), NO_SEGMENT);
        assert_eq!(hub.namespace(), None);
        let entity = hub.entity(&owners).unwrap();
        assert_eq!(entity.uid().to_string(), r#"Hub::"hub""#);
        assert_eq!(entity.uid(), uid("Hub", "hub"));
        // No parent, no attribute: `resource in Segment::"…"` never matches the hub.
        assert_eq!(entity.to_string().matches("Segment").count(), 0, "{entity}");
        // Each kind has its own cache maps.
        let channel = Channel::parse("hub").unwrap();
        let kinds = [
            Resource::Channel(&channel).kind(),
            Resource::Segment("hub").kind(),
            hub.kind(),
        ];
        assert!(kinds.iter().all(|&kind| kind < RESOURCE_KINDS));
        assert!(kinds[0] != kinds[1] && kinds[1] != kinds[2] && kinds[0] != kinds[2]);
    }

    #[test]
    fn actions_round_trip() {
        for action in Action::ALL {
            assert_eq!(action.name().parse::<Action>(), Ok(action));
            assert_eq!(Action::ALL[action.index()], action);
        }
        assert!("publishx".parse::<Action>().is_err());
    }
}
