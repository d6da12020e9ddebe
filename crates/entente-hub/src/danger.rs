//! Settings that weaken the hub's security, for measuring what the security costs and for
//! nothing else. A deployed hub sets none of them; every use is named `danger` where it is
//! made (`config.danger.…`).

/// Settings that weaken security. The default sets none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Danger {
    /// Make no policy decision about traffic: every publish, direct message, request,
    /// subscription and directory lookup that the structural rules (own `_direct`/`_reply`
    /// namespaces, reply grants) leave to the policies is allowed, and nothing is decided or
    /// counted. Administrative acts keep their checks. The structural rules, the
    /// sender binding and replay windows still hold. For `entente bench
    /// --compare-authorization`, which measures authorization on against off.
    pub skip_policy_decisions: bool,
}
