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

use entente_crypto::{
    ApprovalStatement, GrantRequestBody, ObjectKind, SignedBatchIn, Verdict, envelope_digest,
};
use entente_types::MessageId;
use entente_wire::{
    ApproveRequest, ApproveResponse, GrantInfo, GrantRequest, GrantRequestInfo, GrantResponse,
    HeldMessage, ListGrantsRequest, ListGrantsResponse, ListHeldRequest, ListHeldResponse,
    RequestGrantRequest, RequestGrantResponse, RevokeGrantRequest, RevokeGrantResponse,
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
    /// Rejected: the request is closed, or the held message will never be delivered.
    Rejected,
    /// The approval a held message needed: it was delivered to its channel.
    Released {
        /// Distinct approvals.
        approvals: u32,
    },
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
    ///
    /// An `id` that is a message ID (UUID text) names a message held for approval
    /// ([`held`](Self::held)): the statement is bound to the hash of its envelope, which the
    /// SDK computes from the sealed envelope the hub shows; the sender never approves its own.
    pub async fn approve(&self, id: &str) -> Result<ApprovalOutcome, Error> {
        if MessageId::parse(id).is_ok() {
            return self.decide_held(id, Verdict::Approve).await;
        }
        self.decide(id, Verdict::Approve).await
    }

    /// Rejects the just-in-time request `request_id`, as [`approve`](Self::approve) approves
    /// it: one rejection closes a request. The requester may reject its own request, which
    /// withdraws it.
    ///
    /// A held message's ID rejects that message; its sender may reject (withdraw) it too.
    pub async fn reject(&self, id: &str) -> Result<ApprovalOutcome, Error> {
        if MessageId::parse(id).is_ok() {
            return self.decide_held(id, Verdict::Reject).await;
        }
        self.decide(id, Verdict::Reject).await
    }

    /// Ends grant `id` (`g-<n>`) now, before its time, with a `reason` (required). Returns
    /// the grant as it was. The hub's policies must permit this client's principal `revoke`
    /// on the grant's holder; the subscriptions the grant opened end at once (`DENIED`).
    /// Errors: [`ErrorKind::Denied`] when not permitted, [`ErrorKind::Refused`] for a grant
    /// that is unknown or already ended, [`ErrorKind::InvalidInput`] for a bad ID or reason.
    pub async fn revoke_grant(&self, id: &str, reason: &str) -> Result<GrantInfo, Error> {
        let response: RevokeGrantResponse = self
            .transport()
            .unary(
                entente_hub::REVOKE_GRANT_PATH,
                RevokeGrantRequest {
                    id: id.to_owned(),
                    reason: reason.to_owned(),
                },
                self.request_timeout(),
                "ending a grant",
            )
            .await
            .map_err(|e| self.grant_error(e))?;
        response
            .grant
            .ok_or_else(|| Error::new(ErrorKind::Protocol, "the hub answered without the grant"))
    }

    /// The messages held for approval that this principal may see: its own, and those on
    /// channels it may approve for, pending or decided within the hour, in the order the hub
    /// received them. The payloads stay sealed.
    ///
    /// The list leaves out each message's sealed batch; [`approve`](Self::approve) fetches the
    /// one it decides, with its batch.
    pub async fn held(&self) -> Result<Vec<HeldMessage>, Error> {
        self.list_held(String::new()).await
    }

    async fn list_held(&self, message_id: String) -> Result<Vec<HeldMessage>, Error> {
        let response: ListHeldResponse = self
            .transport()
            .unary(
                entente_hub::LIST_HELD_PATH,
                ListHeldRequest { message_id },
                self.request_timeout(),
                "listing held messages",
            )
            .await
            .map_err(|e| self.grant_error(e))?;
        Ok(response.held)
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

    async fn decide_held(&self, id: &str, verdict: Verdict) -> Result<ApprovalOutcome, Error> {
        let held = self.list_held(id.to_owned()).await?;
        let message = held.iter().find(|h| h.message_id == id).ok_or_else(|| {
            Error::new(
                ErrorKind::Refused,
                format!("the hub shows no held message `{id}` to this principal"),
            )
        })?;
        if message.state != "pending" {
            return Err(Error::new(
                ErrorKind::Refused,
                format!("held message `{id}` is {}", message.state.escape_debug()),
            ));
        }
        let hash = held_hash(message)?;
        if verdict == Verdict::Approve {
            self.check_sender_signed(message).await?;
        }
        self.sign_and_send(id, ObjectKind::Envelope, hash, verdict)
            .await
    }

    /// Verifies, before approving, that the held message's sender signed it: its batch
    /// signature against the sender's key bundle (from the directory, verified against the
    /// trust bundle). The hub's word on who sent it is not enough.
    async fn check_sender_signed(&self, held: &HeldMessage) -> Result<(), Error> {
        let refuse = |what: String| {
            Error::new(
                ErrorKind::Crypto,
                format!(
                    "held message `{}`: {what}; not approving it",
                    held.message_id
                ),
            )
        };
        let sender = Principal::parse(&held.sender)
            .map_err(|e| refuse(format!("its sender is not a principal: {e}")))?;
        let batch = held
            .batch
            .clone()
            .ok_or_else(|| refuse("no batch shown".to_owned()))?;
        let batch = SignedBatchIn::from_wire(batch)
            .map_err(|e| refuse(format!("its batch is malformed: {e}")))?;
        let bundle = self.key_bundle(&sender).await?;
        let now_ms = millis(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        );
        batch
            .verify_signature(&bundle, now_ms)
            .map_err(|e| refuse(format!("its sender's signature does not verify: {e}")))
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
        let hash = request_hash(request);
        self.sign_and_send(request_id, ObjectKind::GrantRequest, hash, verdict)
            .await
    }

    /// Signs a statement about object `id` of `kind` with `hash`, sends it and reads the
    /// outcome.
    async fn sign_and_send(
        &self,
        id: &str,
        kind: ObjectKind,
        hash: [u8; 32],
        verdict: Verdict,
    ) -> Result<ApprovalOutcome, Error> {
        let request_id = id;
        // The latest key bundle: the hub verifies it against its trust bundle, which drops a
        // retired intermediate.
        let identity = self.current_identity();
        let statement = ApprovalStatement {
            verdict,
            kind,
            object_id: id.to_owned(),
            object_hash: hash,
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
            "released" => Ok(ApprovalOutcome::Released {
                approvals: response.approvals,
            }),
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
    /// (unknown, expired or decided requests, replays, limits: [`ErrorKind::Refused`]); a rate
    /// limit refused the call itself ([`ErrorKind::Limited`], with a retry-after).
    pub(crate) fn grant_error(&self, error: Error) -> Error {
        let code = std::error::Error::source(&error)
            .and_then(|s| s.downcast_ref::<tonic::Status>())
            .map(tonic::Status::code);
        let error = match code {
            Some(tonic::Code::InvalidArgument) => error.with_kind(ErrorKind::InvalidInput),
            // A rate limit's refusal (with a retry-after) stays `Limited`.
            Some(tonic::Code::ResourceExhausted) if error.retry_after().is_some() => error,
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

/// The hash of a held message's envelope (PROTOCOL.md §4.4), computed from the sealed batch
/// the hub shows, which must be the one envelope of the message's sender on its channel.
pub fn held_hash(held: &HeldMessage) -> Result<[u8; 32], Error> {
    let protocol = |what: &str| Error::new(ErrorKind::Protocol, format!("held message: {what}"));
    let batch = held
        .batch
        .as_ref()
        .ok_or_else(|| protocol("no batch shown"))?;
    if batch.sender != held.sender || batch.channel != held.channel {
        return Err(protocol("the batch shown is of another sender or channel"));
    }
    let [envelope] = batch.envelopes.as_slice() else {
        return Err(protocol("the batch shown is not one envelope"));
    };
    // Only a batch of replies names channels per envelope, and replies are never held.
    if !envelope.channel.is_empty() {
        return Err(protocol("the envelope shown names a channel of its own"));
    }
    let id = MessageId::from_slice(envelope.message_id.as_slice())
        .map_err(|e| protocol(&format!("message id: {e}")))?;
    if id.to_string() != held.message_id {
        return Err(protocol("the envelope shown is another message"));
    }
    Ok(envelope_digest(&batch.sender, &batch.channel, envelope))
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
