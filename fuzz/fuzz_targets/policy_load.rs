//! Policy loading: Cedar text as an administrator loads it (`LoadPolicies`, `entente policy
//! load`, or the hub's first policy files), through `entente-policy`'s loader: parsed, named,
//! validated against Entente's schema (strict), checked against Entente's rules (IDs,
//! `@cross_segment`, `@hold`, grant annotations, `@rate`) and sliced. NUL bytes split the input into
//! sources (a load carries several), so that what spans sources — duplicate IDs, grant
//! definitions, where each problem is — is reached too. A refused set's problems are
//! formatted (with their line and column); a set that loads is asked a few decisions and an
//! explanation.
//!
//! The hub puts its base policies first in every set; they are not added here, where they
//! would cost most of each run, but are one of the seeds.
#![no_main]

use entente_policy::{Action, Engine, Facts, PolicySet, Resource, Subject};
use entente_types::{AgentId, Channel, ChannelPattern, HumanId, Principal, TrustDomain};
use libfuzzer_sys::fuzz_target;

/// Most sources a load may carry (`MAX_POLICY_SOURCES` of the wire bounds).
const MAX_SOURCES: usize = entente_wire::MAX_POLICY_SOURCES;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let builder = text
        .split('\0')
        .take(MAX_SOURCES)
        .enumerate()
        .fold(PolicySet::builder(), |builder, (i, source)| {
            builder.source(format!("source-{i}.cedar"), source)
        });
    match builder.build() {
        Err(error) => {
            let _ = error.to_string();
            for problem in error.problems() {
                let _ = problem.to_string();
            }
        }
        Ok(set) => decide(set),
    }
});

fn decide(set: PolicySet) {
    let _ = set.grant_definitions().count();
    let _ = set.namespace_owner("orders");
    for (_, rate) in set.rated() {
        let _ = (rate.interval(), rate.to_string());
    }
    let Some(requests) = Requests::new() else {
        return;
    };
    let engine = Engine::new(set);
    let facts = Facts::default();
    let now = entente_fuzz::NOW_MS;
    let asks = [
        (Action::Publish, Resource::Channel(&requests.channel)),
        (Action::Request, Resource::Channel(&requests.direct)),
        (Action::Subscribe, Resource::Pattern(&requests.pattern)),
        (Action::Grant, Resource::Agent(&requests.agent)),
        (Action::Approve, Resource::Human(&requests.human)),
        (Action::Enroll, Resource::Segment("ops")),
        (Action::Admin, Resource::Hub("hub")),
    ];
    for (action, resource) in &asks {
        let _ = engine.decide(&requests.alice, *action, resource, &facts, now);
    }
    let _ = engine.decide(
        &requests.ann,
        Action::Admin,
        &Resource::Hub("hub"),
        &facts,
        now,
    );
    let publish = Resource::Channel(&requests.channel);
    let _ = engine.explain(&requests.alice, Action::Publish, &publish, &facts, now);
}

/// The principals and resources the decisions are asked about.
struct Requests {
    alice: Subject,
    ann: Subject,
    channel: Channel,
    direct: Channel,
    pattern: ChannelPattern,
    agent: AgentId,
    human: HumanId,
}

impl Requests {
    fn new() -> Option<Self> {
        let td = TrustDomain::new(entente_fuzz::TRUST_DOMAIN).ok()?;
        let agent = AgentId::new(&td, "ops", "bob").ok()?;
        let human = HumanId::new(&td, "ann").ok()?;
        Some(Self {
            alice: Subject::new(
                Principal::from(AgentId::new(&td, "ops", "alice").ok()?),
                ["writer"],
            ),
            ann: Subject::new(Principal::from(human.clone()), Vec::<String>::new()),
            channel: Channel::parse("orders.eu.created").ok()?,
            direct: Channel::parse("_direct.ops.bob").ok()?,
            pattern: ChannelPattern::parse("orders.>").ok()?,
            agent,
            human,
        })
    }
}
