//! Time-bound grants and just-in-time elevation: [`Client::grant`], [`Client::grants`],
//! [`Client::request_grant`], [`Client::approve`] and [`Client::reject`].
//!
//! A grant is a named entitlement with an end, defined by the hub's policies
//! (`@grant("name")`) and tested by them (`context.grants.contains("name")`). A principal
//! gets one directly from a principal the policies let grant to it, or by asking for it just
//! in time ([`Client::request_grant`]) and having principals other than itself approve the
//! request. An approval is a statement the approver signs with its own message key over the
//! request's ID and the hash of the request as the approver was shown it (docs/PROTOCOL.md
//! §11); the SDK computes that hash itself from the fields the hub lists, never taking a hash
//! from the hub.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use entente_crypto::{ApprovalStatement, GrantRequestBody, ObjectKind, Verdict};
use entente_wire::{
    ApproveRequest, ApproveResponse, GrantInfo, GrantRequest, GrantRequestInfo, GrantResponse,
    ListGrantsRequest, ListGrantsResponse, RequestGrantRequest, RequestGrantResponse,
};

use crate::{Client, Error, ErrorKind, Principal};

/// What an approval or rejection did to its request ([`Client::approve`],
/// [`Client::reject`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApprovalOutcome {
    /// Recorded; more approvals are needed.
    Pending {
        /// Distinct approvals so far.
        approvals: u32,
        /// How many are needed.
        required: u32,
    },
    /// The last approval needed: the grant is active from now.
    Granted(GrantInfo),
    /// Rejected: the request is closed.
    Rejected,
}

// === impl Client ===

impl Client {
    /// Gives `principal` the grant `name` for `duration` from now, with a `reason` (required;
    /// kept with the grant). Returns the grant.
    ///
    /// The hub's policies must permit this client's principal the action `grant` on
    /// `principal`, and a policy must define the grant (`@grant("name")`) with a
    /// `@max_duration` of at least `duration`. Nobody grants to itself. Errors: kind
    /// [`ErrorKind::Denied`] when not permitted (or to oneself), [`ErrorKind::InvalidInput`]
    /// for an unknown name, a duration over the maximum or a bad reason,
    /// [`ErrorKind::Closed`] if the hub could not store the grant (nothing changed).
    ///
    /// ```no_run
    /// # async fn run(admin: entente_client::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    ///
    /// use entente_client::Principal;
    ///
    /// let eve = Principal::parse("spiffe://acme.internal/agent/ops/eve")?;
    /// let grant = admin
    ///     .grant(&eve, "demo-read", Duration::from_secs(15 * 60), "INC-42: read the orders")
    ///     .await?;
    /// println!("{} holds {} until {}", grant.principal, grant.name, grant.not_after_ms);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn grant(
        &self,
        principal: &Principal,
        name: &str,
        duration: Duration,
        reason: &str,
    ) -> Result<GrantInfo, Error> {
        let duration_ms = millis(duration);
        if duration_ms == 0 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "a grant lasts at least one millisecond",
            ));
        }
        self.give(principal, name, duration_ms, 0, reason).await
    }

    /// Gives `principal` the grant `name` until `until`, as [`grant`](Self::grant) does for
    /// a duration.
    pub async fn grant_until(
        &self,
        principal: &Principal,
        name: &str,
        until: SystemTime,
        reason: &str,
    ) -> Result<GrantInfo, Error> {
        let not_after_ms = until
            .duration_since(UNIX_EPOCH)
            .map(millis)
            .unwrap_or_default();
        if not_after_ms == 0 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "a grant ends after 1970",
            ));
        }
        self.give(principal, name, 0, not_after_ms, reason).await
    }

    /// The grants and just-in-time requests this client's principal may see: its own, and
    /// those of principals its policies let it `admin` (requests also those it may
    /// `approve`). Grants listed are active; requests are pending, decided or lapsed ones the
    /// hub still keeps, with their approvals.
    pub async fn grants(&self) -> Result<ListGrantsResponse, Error> {
        self.list(String::new()).await
    }

    /// As [`grants`](Self::grants), only `principal`'s (held or requested).
    pub async fn grants_of(&self, principal: &Principal) -> Result<ListGrantsResponse, Error> {
        self.list(principal.to_string()).await
    }

    /// Asks, for this client's principal, the grant `name` for `duration` once approved, with
    /// a `reason` the approvers will read. Returns the pending request: its ID (`r-<n>`),
    /// how many approvals it needs, and when it lapses if nobody decides.
    ///
    /// A principal asks only for itself, and never approves its own request; other
    /// principals whose policies let them `approve` for it do ([`Client::approve`]).
    ///
    /// ```no_run
    /// # async fn run(eve: entente_client::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    ///
    /// let request = eve
    ///     .request_grant("demo-read", Duration::from_secs(15 * 60), "INC-42: read the orders")
    ///     .await?;
    /// println!("ask an approver to run `entente approve {}`", request.id);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn request_grant(
        &self,
        name: &str,
        duration: Duration,
        reason: &str,
    ) -> Result<GrantRequestInfo, Error> {
        let response: RequestGrantResponse = self
            .transport()
            .unary(
                entente_hub::REQUEST_GRANT_PATH,
                RequestGrantRequest {
                    name: name.to_owned(),
                    duration_ms: millis(duration),
                    reason: reason.to_owned(),
                },
                self.request_timeout(),
                "requesting a grant",
            )
            .await
            .map_err(|e| self.grant_error(e))?;
        response
            .request
            .ok_or_else(|| Error::new(ErrorKind::Protocol, "the hub answered without the request"))
    }

    /// Approves the just-in-time request `request_id` (`r-<n>`): fetches the request from the
    /// hub, computes its hash from the fields shown, signs an approval statement with this
    /// identity's message key, and sends it. Returns whether the request is still pending
    /// (more approvals needed) or granted.
    ///
    /// Refused when this principal may not approve for the requester, when it is the
    /// requester (separation of duties), when it approved already, and when the request is
    /// unknown, expired or decided.
    ///
    /// ```no_run
    /// # async fn run(admin: entente_client::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// use entente_client::ApprovalOutcome;
    ///
    /// match admin.approve("r-1").await? {
    ///     ApprovalOutcome::Granted(grant) => println!("granted until {}", grant.not_after_ms),
    ///     ApprovalOutcome::Pending { approvals, required } => {
    ///         println!("{approvals} of {required} approvals")
    ///     }
    ///     other => println!("{other:?}"),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn approve(&self, request_id: &str) -> Result<ApprovalOutcome, Error> {
        self.decide(request_id, Verdict::Approve).await
    }

    /// Rejects the just-in-time request `request_id`, as [`approve`](Self::approve) approves
    /// it: one rejection closes a request. The requester may reject its own request, which
    /// withdraws it.
    pub async fn reject(&self, request_id: &str) -> Result<ApprovalOutcome, Error> {
        self.decide(request_id, Verdict::Reject).await
    }

    // --- helpers ---

    async fn give(
        &self,
        principal: &Principal,
        name: &str,
        duration_ms: u64,
        not_after_ms: u64,
        reason: &str,
    ) -> Result<GrantInfo, Error> {
        let response: GrantResponse = self
            .transport()
            .unary(
                entente_hub::GRANT_PATH,
                GrantRequest {
                    principal: principal.to_string(),
                    name: name.to_owned(),
                    duration_ms,
                    not_after_ms,
                    reason: reason.to_owned(),
                },
                self.request_timeout(),
                "granting",
            )
            .await
            .map_err(|e| self.grant_error(e))?;
        response
            .grant
            .ok_or_else(|| Error::new(ErrorKind::Protocol, "the hub answered without the grant"))
    }

    async fn list(&self, principal: String) -> Result<ListGrantsResponse, Error> {
        self.transport()
            .unary(
                entente_hub::LIST_GRANTS_PATH,
                ListGrantsRequest { principal },
                self.request_timeout(),
                "listing grants",
            )
            .await
            .map_err(|e| self.grant_error(e))
    }

    async fn decide(&self, request_id: &str, verdict: Verdict) -> Result<ApprovalOutcome, Error> {
        let listed = self.grants().await?;
        let request = listed
            .requests
            .iter()
            .find(|r| r.id == request_id)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Refused,
                    format!("the hub shows no request `{request_id}` to this principal"),
                )
            })?;
        let identity = self.connected_identity();
        let statement = ApprovalStatement {
            verdict,
            kind: ObjectKind::GrantRequest,
            object_id: request.id.clone(),
            object_hash: request_hash(request),
            approver: identity.principal().clone(),
            key_epoch: identity.key_bundle().epoch(),
            signed_at_ms: millis(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default(),
            ),
        };
        let signed = statement.sign(identity.message_keys()).map_err(|e| {
            Error::new(ErrorKind::InvalidInput, format!("`{request_id}`: {e}")).with_source(e)
        })?;
        let statement = signed.statement();
        let wire = entente_wire::ApprovalStatement {
            verdict: statement.verdict.as_str().to_owned(),
            kind: statement.kind.as_str().to_owned(),
            object_id: statement.object_id.clone(),
            object_hash: statement.object_hash.to_vec(),
            approver: statement.approver.to_string(),
            key_epoch: statement.key_epoch,
            signed_at_ms: statement.signed_at_ms,
        };
        let response: ApproveResponse = self
            .transport()
            .unary(
                entente_hub::APPROVE_PATH,
                ApproveRequest {
                    statement: Some(wire),
                    signature: signed.signature().to_vec(),
                    key_bundle: Some(identity.key_bundle().to_wire().clone()),
                },
                self.request_timeout(),
                match verdict {
                    Verdict::Approve => "approving",
                    Verdict::Reject => "rejecting",
                },
            )
            .await
            .map_err(|e| self.grant_error(e))?;
        match response.outcome.as_str() {
            "pending" => Ok(ApprovalOutcome::Pending {
                approvals: response.approvals,
                required: response.required,
            }),
            "granted" => response
                .grant
                .map(ApprovalOutcome::Granted)
                .ok_or_else(|| Error::new(ErrorKind::Protocol, "granted, without the grant")),
            "rejected" => Ok(ApprovalOutcome::Rejected),
            other => Err(Error::new(
                ErrorKind::Protocol,
                format!(
                    "the hub answered an unknown outcome `{}`",
                    other.escape_debug()
                ),
            )),
        }
    }

    /// A grant RPC's error with a kind to match on: what the caller asked is unusable
    /// (`INVALID_ARGUMENT`: [`ErrorKind::InvalidInput`]); the hub refused it in its state
    /// (unknown, expired or decided requests, replays, limits: [`ErrorKind::Refused`]).
    fn grant_error(&self, error: Error) -> Error {
        let code = std::error::Error::source(&error)
            .and_then(|s| s.downcast_ref::<tonic::Status>())
            .map(tonic::Status::code);
        let error = match code {
            Some(tonic::Code::InvalidArgument) => error.with_kind(ErrorKind::InvalidInput),
            Some(
                tonic::Code::NotFound
                | tonic::Code::FailedPrecondition
                | tonic::Code::AlreadyExists
                | tonic::Code::ResourceExhausted,
            ) => error.with_kind(ErrorKind::Refused),
            _ => error,
        };
        self.after_end(error)
    }
}

/// SHA-256 of a request's canonical bytes, from the fields as shown (PROTOCOL.md §11.2).
pub fn request_hash(request: &GrantRequestInfo) -> [u8; 32] {
    GrantRequestBody {
        id: &request.id,
        requester: &request.requester,
        name: &request.name,
        duration_ms: request.duration_ms,
        reason: &request.reason,
        created_at_ms: request.created_at_ms,
        expires_at_ms: request.expires_at_ms,
    }
    .hash()
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
