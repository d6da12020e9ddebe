//! The CA in use and the rollover of its intermediate, with overlap (docs/KEYS.md §4).
//!
//! [`CaState`] holds the [`Ca`] every issuing and signing path reads. A rollover replaces it
//! in three steps, each persisted in the store (config key [`CA_ROLLOVER_KEY`]) before it takes
//! effect and each recorded in the audit log:
//!
//! 1. **stage** — a new intermediate, signed by the root, joins the trust bundle. Enrollment
//!    and renewal answers carry the bundle, so every agent that gets a certificate from now on
//!    knows the new intermediate. Nothing is signed with it yet.
//! 2. **activate**, [`CaRollover::overlap`] later — the new intermediate signs certificates,
//!    key bundles and revocation lists; every stored key bundle is signed again with it; the
//!    hub's own certificate is reissued. The old intermediate stays trusted. Because the
//!    overlap is at least the SVID lifetime, every agent holding a valid certificate now got
//!    it after the staging, so it knows the new intermediate.
//! 3. **retire**, another overlap later — every certificate the old intermediate signed has
//!    expired. Key bundles it still signs are signed again, its serial number is revoked (so
//!    a chain through it is refused even if its key leaked), it leaves the trust bundle and
//!    its key is deleted from the key store.
//!
//! The hub stages by itself when the active intermediate has less than [`CaRollover::lead`]
//! left, and on request (`entente keys rotate intermediate`); later steps are taken by
//! [`rollover_loop`] when due. No connection is closed by any step.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use entente_audit::{Admin, Event, Outcome};
use entente_ca::{Ca, CaError, CaOptions, CaPem, IntermediateRole};
use entente_crypto::KeyBundleIn;
use entente_keystore::KeyStore;
use entente_types::TrustDomain;
use entente_wire::{IntermediateInfo, KeyBundle, Limits, StoredCaRollover};
use tokio::sync::{Notify, watch};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::audit::{self, Auditor};
use crate::config::CaRollover;
use crate::error::HubError;
use crate::registry::Registry;
use crate::rpc::{self, RpcError, Services};

/// The store's config key under which the hub keeps its intermediates once a rollover began.
pub const CA_ROLLOVER_KEY: &str = "ca_rollover";

/// The store's config key under which the hub notes the schedule it put in force (16 bytes:
/// `staged_at_ms`, `activated_at_ms`, big-endian), written after each step took effect. A
/// stored schedule that differs from it was stored by a step that failed (a write reported
/// failed may have landed) and never took effect: at the next start that step counts from
/// then, so its overlap is whole — agents never got a staged intermediate the hub never
/// handed out, nor renewed under one that never signed.
pub const CA_ROLLOVER_APPLIED_KEY: &str = "ca_rollover_applied";

/// The version of [`StoredCaRollover`] this hub writes and reads.
const STORED_VERSION: u32 = 1;

/// After a failed step, the loop tries again this much later (or after the overlap if
/// shorter)...
const RETRY: Duration = Duration::from_secs(60);
/// ...and after a step refused by the CA's state, this much later.
const PRECONDITION_RETRY: Duration = Duration::from_secs(60 * 60);

/// The CA in use, and when the rollover steps were taken.
#[derive(Debug)]
pub(crate) struct CaState {
    current: RwLock<Arc<Ca>>,
    schedule: Mutex<Schedule>,
    /// One rollover step at a time.
    steps: tokio::sync::Mutex<()>,
    /// Signalled when a new intermediate signs: the hub reissues its own certificate.
    activated: Notify,
    trust_domain: TrustDomain,
    keystore: Arc<dyn KeyStore>,
    config: CaRollover,
    /// A staging whose state the registry failed to store: the CA with the new intermediate,
    /// whose key is in the key store. The next staging stores it again instead of generating
    /// another key, so a registry that keeps failing leaves no pile of unused keys.
    unstored: Mutex<Option<Arc<Ca>>>,
}

/// When the latest steps were taken, Unix milliseconds (0: never).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Schedule {
    staged_at_ms: u64,
    activated_at_ms: u64,
}

impl Schedule {
    /// As [`CA_ROLLOVER_APPLIED_KEY`] holds it.
    fn to_bytes(self) -> [u8; 16] {
        let mut bytes = [0u8; 16];
        let (staged, activated) = bytes.split_at_mut(8);
        staged.copy_from_slice(&self.staged_at_ms.to_be_bytes());
        activated.copy_from_slice(&self.activated_at_ms.to_be_bytes());
        bytes
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let (staged, activated) = bytes.split_at_checked(8)?;
        Some(Self {
            staged_at_ms: u64::from_be_bytes(staged.try_into().ok()?),
            activated_at_ms: u64::from_be_bytes(activated.try_into().ok()?),
        })
    }
}

/// Notes `schedule` as the one in force ([`CA_ROLLOVER_APPLIED_KEY`]).
async fn note_applied(registry: &Registry, schedule: Schedule) -> Result<(), HubError> {
    registry
        .put_config(CA_ROLLOVER_APPLIED_KEY, &schedule.to_bytes())
        .await
        .map_err(HubError::from)
}

/// A rollover step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    Stage,
    Activate,
    Retire,
}

// === impl CaState ===

impl CaState {
    /// The CA as the store last left it: `ca`'s root with the stored intermediates if a
    /// rollover began, else `ca` itself.
    pub(crate) async fn open(
        ca: Arc<Ca>,
        registry: &Registry,
        limits: &Limits,
        config: CaRollover,
    ) -> Result<Self, HubError> {
        let stored = registry.config(CA_ROLLOVER_KEY).await?;
        let applied = match registry.config(CA_ROLLOVER_APPLIED_KEY).await? {
            Some(bytes) => Some(Schedule::from_bytes(&bytes).ok_or_else(|| {
                HubError::Ca(format!(
                    "the stored rollover state: `{CA_ROLLOVER_APPLIED_KEY}` is {} bytes, not 16",
                    bytes.len()
                ))
            })?),
            None => None,
        };
        // Whether the schedule is one of this start's making (counted from now): stored before
        // it is noted, so that the next start does not count it from its own start again.
        let mut made_now = false;
        let (ca, schedule) = match stored {
            Some(bytes) => {
                let (loaded, mut schedule) = from_stored(
                    ca.keystore().clone(),
                    &ca.to_pem().root,
                    *ca.options(),
                    &bytes,
                    limits,
                )?;
                // A step stored but never in force counts from now (a store from before the
                // note was kept has none: its schedule stands).
                if let Some(applied) = applied
                    && applied != schedule
                {
                    let now_ms = rpc::unix_ms(SystemTime::now());
                    if schedule.staged_at_ms != applied.staged_at_ms {
                        schedule.staged_at_ms = now_ms;
                    }
                    if schedule.activated_at_ms != applied.activated_at_ms {
                        schedule.activated_at_ms = now_ms;
                    }
                    made_now = true;
                    tracing::warn!(
                        "the stored intermediate rollover holds a step that was never in force \
                         (its store was reported failed): its overlap counts from now"
                    );
                }
                (Arc::new(loaded), schedule)
            }
            // A CA handed over mid-rollover with no stored schedule: its next step waits a
            // whole overlap from now, never less.
            None => {
                let now_ms = rpc::unix_ms(SystemTime::now());
                let roles: Vec<IntermediateRole> =
                    ca.intermediates().iter().map(|i| i.role).collect();
                let schedule = Schedule {
                    staged_at_ms: if roles.contains(&IntermediateRole::Staged) {
                        now_ms
                    } else {
                        0
                    },
                    activated_at_ms: if roles.contains(&IntermediateRole::Retiring) {
                        now_ms
                    } else {
                        0
                    },
                };
                made_now = schedule != Schedule::default();
                (ca, schedule)
            }
        };
        // A schedule counted from now is stored, then the schedule in force noted: a later step
        // stored but never in force is told from it. (Unstored, it is counted from the next
        // start again, and not noted.)
        let stored_now = if made_now {
            persist(registry, &ca, schedule).await.map_err(|e| {
                tracing::warn!("storing the intermediate rollover schedule failed: {e}");
            })
        } else {
            Ok(())
        };
        if stored_now.is_ok()
            && applied != Some(schedule)
            && let Err(e) = note_applied(registry, schedule).await
        {
            tracing::warn!("noting the intermediate rollover schedule in force failed: {e}");
        }
        Ok(Self {
            trust_domain: ca.trust_domain().clone(),
            keystore: ca.keystore().clone(),
            current: RwLock::new(ca),
            schedule: Mutex::new(schedule),
            steps: tokio::sync::Mutex::new(()),
            activated: Notify::new(),
            config,
            unstored: Mutex::new(None),
        })
    }

    /// The CA in use.
    pub(crate) fn current(&self) -> Arc<Ca> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The trust domain (never changes).
    pub(crate) fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The backend of the key store the CA's keys live in (`local`, `pkcs11`).
    pub(crate) fn backend(&self) -> &'static str {
        self.keystore.backend()
    }

    /// The trust bundle in force, PEM: what enrollment and renewal answers carry.
    pub(crate) fn trust_pem(&self) -> String {
        self.current().trust_bundle().to_pem()
    }

    /// When the signing intermediate expires: no key bundle outlives it.
    pub(crate) fn not_after(&self) -> SystemTime {
        let ca = self.current();
        ca.intermediates()
            .first()
            .map_or(SystemTime::UNIX_EPOCH, |i| i.not_after)
    }

    /// Resolves when a new intermediate starts signing.
    pub(crate) async fn activated(&self) {
        self.activated.notified().await;
    }

    /// The next step and when it is due: activation an overlap after staging, retirement an
    /// overlap after activation, staging once the active intermediate has less than the lead
    /// left (only if automatic).
    pub(crate) fn next_step(&self) -> Option<(Step, SystemTime)> {
        let ca = self.current();
        let schedule = *self.schedule.lock().unwrap_or_else(PoisonError::into_inner);
        let at = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms) + self.config.overlap;
        let roles: Vec<IntermediateRole> = ca.intermediates().iter().map(|i| i.role).collect();
        if roles.contains(&IntermediateRole::Staged) {
            return Some((Step::Activate, at(schedule.staged_at_ms)));
        }
        if roles.contains(&IntermediateRole::Retiring) {
            return Some((Step::Retire, at(schedule.activated_at_ms)));
        }
        if !self.config.automatic {
            return None;
        }
        let due = self
            .not_after()
            .checked_sub(self.config.lead)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        Some((Step::Stage, due))
    }

    /// The intermediates as the keys RPC lists them, with the next step.
    pub(crate) fn status(&self) -> (Vec<IntermediateInfo>, String, u64) {
        let ca = self.current();
        let list = ca
            .intermediates()
            .into_iter()
            .map(|i| IntermediateInfo {
                role: role_name(i.role).to_owned(),
                signer: i.signer_id.to_vec(),
                not_before_ms: rpc::unix_ms(i.not_before),
                not_after_ms: rpc::unix_ms(i.not_after),
                key: i.key.map(|k| k.to_string()).unwrap_or_default(),
            })
            .collect();
        let (next, due) = match self.next_step() {
            Some((step, due)) => (step_name(step).to_owned(), rpc::unix_ms(due)),
            None => (String::new(), 0),
        };
        (list, next, due)
    }

    fn replace(&self, ca: impl Into<Arc<Ca>>, schedule: Schedule) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = ca.into();
        *self.schedule.lock().unwrap_or_else(PoisonError::into_inner) = schedule;
    }

    fn schedule(&self) -> Schedule {
        *self.schedule.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The staging a failed store left, if it still fits `ca`, the CA in use (the same active
    /// intermediate and nothing else) and its key is still in the key store; else it is
    /// forgotten (its key is left alone: a failed write may have landed and name it).
    async fn unstored_staging(&self, ca: &Ca) -> Result<Option<Arc<Ca>>, RpcError> {
        let Some(staged) = self.unstored_slot().clone() else {
            return Ok(None);
        };
        let key = staged
            .intermediates()
            .into_iter()
            .find(|i| i.role == IntermediateRole::Staged)
            .and_then(|i| i.key);
        let fits = ca.intermediates().len() == 1 && staged.signer_id() == ca.signer_id();
        let kept = match key {
            Some(key) if fits => {
                let keystore = self.keystore.clone();
                // An unavailable key store fails the step and keeps the staging for the next.
                rpc::blocking(move || {
                    keystore
                        .contains(&key)
                        .map_err(|e| RpcError::Keys(e.to_string()))
                })
                .await?
            }
            _ => false,
        };
        if !kept {
            *self.unstored_slot() = None;
            return Ok(None);
        }
        Ok(Some(staged))
    }

    fn unstored_slot(&self) -> MutexGuard<'_, Option<Arc<Ca>>> {
        self.unstored.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Reopens a CA from its root and first intermediate (as `Ca::load` does) and, if the store
/// holds the state of a rollover (`stored`, the value of [`CA_ROLLOVER_KEY`]), with the
/// intermediates of that rollover instead: how a tool that opens the hub's data outside the
/// hub (the CLI) sees the CA the hub uses.
pub fn load_ca(
    keystore: Arc<dyn KeyStore>,
    root_pem: &str,
    intermediate_pem: &str,
    options: CaOptions,
    stored: Option<&[u8]>,
) -> Result<Ca, HubError> {
    match stored {
        Some(bytes) => {
            from_stored(keystore, root_pem, options, bytes, &Limits::default()).map(|(ca, _)| ca)
        }
        None => Ca::load(keystore, root_pem, intermediate_pem, options)
            .map_err(|e| HubError::Ca(e.to_string())),
    }
}

fn from_stored(
    keystore: Arc<dyn KeyStore>,
    root_pem: &str,
    options: CaOptions,
    bytes: &[u8],
    limits: &Limits,
) -> Result<(Ca, Schedule), HubError> {
    let corrupt = |why: String| HubError::Ca(format!("the stored rollover state: {why}"));
    let stored: StoredCaRollover =
        entente_wire::decode(bytes, limits).map_err(|e| corrupt(e.to_string()))?;
    if stored.version != STORED_VERSION {
        return Err(corrupt(format!(
            "version {} is not version {STORED_VERSION}",
            stored.version
        )));
    }
    let some = |pem: String| (!pem.is_empty()).then_some(pem);
    let pem = CaPem {
        root: root_pem.to_owned(),
        intermediate: stored.intermediate,
        staged: some(stored.staged),
        retiring: some(stored.retiring),
    };
    let ca = Ca::from_pem(keystore, &pem, options).map_err(|e| corrupt(e.to_string()))?;
    Ok((
        ca,
        Schedule {
            staged_at_ms: stored.staged_at_ms,
            activated_at_ms: stored.activated_at_ms,
        },
    ))
}

/// Stores `ca`'s intermediates and `schedule`: the step is taken once this returns.
/// [`note_applied`] after a step took effect; a failure is logged (the next start then counts
/// that step's overlap from its own time: later, never sooner).
async fn noted(registry: &Registry, schedule: Schedule) {
    if let Err(e) = note_applied(registry, schedule).await {
        tracing::warn!("noting the intermediate rollover step in force failed: {e}");
    }
}

async fn persist(registry: &Registry, ca: &Ca, schedule: Schedule) -> Result<(), RpcError> {
    let pem = ca.to_pem();
    let stored = StoredCaRollover {
        version: STORED_VERSION,
        intermediate: pem.intermediate,
        staged: pem.staged.unwrap_or_default(),
        retiring: pem.retiring.unwrap_or_default(),
        staged_at_ms: schedule.staged_at_ms,
        activated_at_ms: schedule.activated_at_ms,
    };
    registry
        .put_config(CA_ROLLOVER_KEY, &entente_wire::encode(&stored))
        .await?;
    Ok(())
}

/// Takes one rollover step now, for `actor`, and records it. Returns what was done, for the
/// keys RPC. Refused with [`RpcError::Precondition`] if the step does not fit the present
/// state (a rollover in progress, nothing staged, the root key offline).
pub(crate) async fn take_step<R>(
    services: &Services<R>,
    step: Step,
    actor: &str,
    now: SystemTime,
) -> Result<String, RpcError> {
    let state = &services.ca;
    let _step = state.steps.lock().await;
    let auditor = services.authz.auditor();
    auditor.check().map_err(RpcError::Unaudited)?;
    let outcome = match step {
        Step::Stage => stage(state, &services.registry, now).await,
        Step::Activate => activate(services, now).await,
        Step::Retire => retire(services, now).await,
    };
    let (result, detail) = match &outcome {
        Ok(done) => (Outcome::Success, done.clone()),
        Err(RpcError::Precondition(why)) => (Outcome::Denied, why.clone()),
        Err(e) => (Outcome::Failed, e.to_string()),
    };
    let event = Event::Admin(Admin {
        operation: audit::clear(&format!("{}-intermediate", step_name(step))),
        target: audit::clear(entente_ca::INTERMEDIATE_KEY),
        detail: audit::clear(&detail),
    });
    record(auditor, actor, result, event).await?;
    outcome
}

async fn record(
    auditor: &Auditor,
    actor: &str,
    outcome: Outcome,
    event: Event,
) -> Result<(), RpcError> {
    auditor
        .record(actor, outcome, event)
        .await
        .map_err(RpcError::Unaudited)
}

async fn stage(state: &CaState, registry: &Registry, now: SystemTime) -> Result<String, RpcError> {
    let ca = state.current();
    // A staging the registry failed to store is stored again, key and certificate: a new key
    // at each try would leave one more unused key (an HSM object) per retry, every minute for
    // as long as the registry fails.
    let (staged, again) = match state.unstored_staging(&ca).await? {
        Some(staged) => (staged, true),
        None => {
            let staged =
                rpc::blocking(move || ca.stage_intermediate(now).map_err(ca_error)).await?;
            (Arc::new(staged), false)
        }
    };
    let schedule = Schedule {
        // When the trust bundle holding it is first handed out: the overlap counts from here.
        staged_at_ms: rpc::unix_ms(now),
        ..state.schedule()
    };
    let new = staged
        .intermediates()
        .into_iter()
        .find(|i| i.role == IntermediateRole::Staged);
    if let Err(e) = persist(registry, &staged, schedule).await {
        // A failed store may still have written the state naming the staged intermediate (a
        // sync that failed after the write): its key is never deleted here, but kept with the
        // staging for the next try, which stores the same intermediate again.
        let key = new.as_ref().and_then(|i| i.key.as_ref());
        tracing::warn!(
            key = %key.map(ToString::to_string).unwrap_or_default(),
            "storing a staged intermediate failed ({e}): its key is kept, and the next try \
             stores the same intermediate again"
        );
        *state.unstored_slot() = Some(staged);
        return Err(e);
    }
    *state.unstored_slot() = None;
    state.replace(staged, schedule);
    noted(registry, schedule).await;
    Ok(match new {
        Some(i) => format!(
            "staged intermediate {}, valid until {} ms{}",
            short(&i.signer_id),
            rpc::unix_ms(i.not_after),
            if again {
                " (made by an earlier try that failed to store it)"
            } else {
                ""
            }
        ),
        None => "staged".to_owned(),
    })
}

async fn activate<R>(services: &Services<R>, now: SystemTime) -> Result<String, RpcError> {
    let state = &services.ca;
    let active = Arc::new(state.current().activate_staged().map_err(ca_error)?);
    let schedule = Schedule {
        activated_at_ms: rpc::unix_ms(now),
        ..state.schedule()
    };
    persist(&services.registry, &active, schedule).await?;
    let signer = short(&active.signer_id());
    // The step is taken (stored): bundles are re-signed before the new intermediate is put
    // in use, so that once it signs, the directory already serves what it signed. A failure
    // here is reported, and the retirement re-signs first.
    let resigned = resign_bundles(services, &active, now).await;
    state.replace(active, schedule);
    state.activated.notify_waiters();
    noted(&services.registry, schedule).await;
    Ok(match resigned {
        Ok(resigned) => format!("intermediate {signer} signs; {resigned} key bundles signed again"),
        Err(e) => format!(
            "intermediate {signer} signs; re-signing the key bundles failed ({e}), the \
             retirement does it"
        ),
    })
}

async fn retire<R>(services: &Services<R>, now: SystemTime) -> Result<String, RpcError> {
    let state = &services.ca;
    // Nothing the retiring intermediate signed may stay in use once it is untrusted.
    let ca = state.current();
    let resigned = resign_bundles(services, &ca, now).await?;
    let (retired, key) = ca.retire_previous().map_err(ca_error)?;
    let old = ca
        .intermediates()
        .into_iter()
        .find(|i| i.role == IntermediateRole::Retiring)
        .ok_or_else(|| RpcError::Precondition("no intermediate is retiring".into()))?;
    let serial = serial_of(&old.cert)?;
    // Routine: every live connection renewed under the active intermediate since.
    services.connections.forget_issuer(&serial);
    crate::admin::revoke_serial(services, &serial, audit::HUB_ACTOR, now).await?;
    let schedule = state.schedule();
    persist(&services.registry, &retired, schedule).await?;
    state.replace(retired, schedule);
    let mut done = format!(
        "intermediate {} retired and its serial revoked; {resigned} key bundles signed again",
        short(&old.signer_id)
    );
    if let Some(key) = key {
        let keystore = state.keystore.clone();
        let deleted = rpc::blocking(move || {
            keystore
                .delete(&key)
                .map_err(|e| RpcError::Keys(e.to_string()))
        })
        .await;
        if deleted.is_err() {
            done.push_str("; its key could not be deleted from the key store");
        }
    }
    Ok(done)
}

/// Signs again, with `ca`'s active intermediate, every stored latest key bundle another
/// intermediate signed and that has not expired. Returns how many.
async fn resign_bundles<R>(
    services: &Services<R>,
    ca: &Arc<Ca>,
    now: SystemTime,
) -> Result<usize, RpcError> {
    let now_ms = rpc::unix_ms(now);
    let mut count = 0;
    for agent in services.registry.agents().await? {
        let Some((epoch, bytes)) = services
            .registry
            .latest_key_bundle(&agent.principal)
            .await?
        else {
            continue;
        };
        let bundle: KeyBundle = entente_wire::decode(&bytes, &services.limits)
            .map_err(|e| RpcError::Corrupt(format!("key bundle of `{}`: {e}", agent.principal)))?;
        if bundle.signer == ca.signer_id() || bundle.not_after_ms < now_ms {
            continue;
        }
        // Only what verifies is signed again: the store is not taken on its word.
        let Ok(verified) =
            KeyBundleIn::from_wire(bundle).and_then(|b| b.verify(ca.trust_bundle(), now_ms))
        else {
            continue;
        };
        let body = verified.body().clone();
        let signer = ca.clone();
        let resigned =
            rpc::blocking(move || signer.sign_key_bundle(body).map_err(ca_error)).await?;
        services
            .registry
            .put_key_bundle(&agent.principal, epoch, &entente_wire::encode(&resigned))
            .await?;
        count += 1;
    }
    Ok(count)
}

/// Takes the steps that are due, until shutdown.
pub(crate) async fn rollover_loop<R: Send + Sync + 'static>(
    services: Arc<Services<R>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let tick = (services.ca.config.overlap / 8).clamp(Duration::from_millis(100), RETRY);
    loop {
        let wait = match services.ca.next_step() {
            Some((step, due)) => match due.duration_since(SystemTime::now()) {
                Ok(wait) => wait.min(tick),
                Err(_) => {
                    match take_step(&services, step, audit::HUB_ACTOR, SystemTime::now()).await {
                        Ok(_) => Duration::ZERO,
                        // E.g. the root key kept offline: an operator must act.
                        Err(RpcError::Precondition(_)) => PRECONDITION_RETRY,
                        Err(_) => RETRY.min(services.ca.config.overlap),
                    }
                }
            },
            None => tick,
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

fn ca_error(error: CaError) -> RpcError {
    match error {
        CaError::Rollover(why) => RpcError::Precondition(why.to_owned()),
        CaError::RootKeyOffline => RpcError::Precondition(error.to_string()),
        other => RpcError::Keys(other.to_string()),
    }
}

/// The serial number of a certificate: the content bytes of its DER INTEGER.
pub(crate) fn serial_of(der: &[u8]) -> Result<Vec<u8>, RpcError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| RpcError::Corrupt(format!("an intermediate certificate: {e}")))?;
    Ok(cert.raw_serial().to_vec())
}

/// The first 8 hex digits of a signer ID, as the CA names its certificates.
fn short(signer: &[u8; 32]) -> String {
    signer.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn role_name(role: IntermediateRole) -> &'static str {
    match role {
        IntermediateRole::Active => "active",
        IntermediateRole::Staged => "staged",
        IntermediateRole::Retiring => "retiring",
    }
}

pub(crate) fn step_name(step: Step) -> &'static str {
    match step {
        Step::Stage => "stage",
        Step::Activate => "activate",
        Step::Retire => "retire",
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]

    use std::sync::atomic::{AtomicBool, Ordering};

    use entente_keystore::KeyName;
    use entente_keystore::local::{Argon2Params, LocalKeyStore, Unlock};
    use entente_store::{AgentRecord, EmbeddedStore, Store, StoreError, TokenRecord};

    use super::*;

    /// An embedded store whose config writes fail while `fail` is set, as on a full disk.
    struct FullDisk {
        inner: EmbeddedStore,
        fail: AtomicBool,
    }

    impl Store for FullDisk {
        async fn put_agent(&self, record: &AgentRecord) -> Result<(), StoreError> {
            self.inner.put_agent(record).await
        }
        async fn agent(&self, principal: &str) -> Result<Option<AgentRecord>, StoreError> {
            self.inner.agent(principal).await
        }
        async fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
            self.inner.agents().await
        }
        async fn put_key_bundle(
            &self,
            principal: &str,
            epoch: u64,
            bundle: &[u8],
        ) -> Result<(), StoreError> {
            self.inner.put_key_bundle(principal, epoch, bundle).await
        }
        async fn key_bundle(
            &self,
            principal: &str,
            epoch: u64,
        ) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.key_bundle(principal, epoch).await
        }
        async fn latest_key_bundle(
            &self,
            principal: &str,
        ) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
            self.inner.latest_key_bundle(principal).await
        }
        async fn put_token(&self, token: &TokenRecord, max: u64) -> Result<(), StoreError> {
            self.inner.put_token(token, max).await
        }
        async fn redeem_token(
            &self,
            hash: &[u8; 32],
            now_ms: u64,
        ) -> Result<TokenRecord, StoreError> {
            self.inner.redeem_token(hash, now_ms).await
        }
        async fn purge_tokens(&self, now_ms: u64) -> Result<u64, StoreError> {
            self.inner.purge_tokens(now_ms).await
        }
        async fn put_revocations(&self, version: u64, list: &[u8]) -> Result<(), StoreError> {
            self.inner.put_revocations(version, list).await
        }
        async fn revocations(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
            self.inner.revocations().await
        }
        async fn put_grants(&self, version: u64, book: &[u8]) -> Result<(), StoreError> {
            self.inner.put_grants(version, book).await
        }
        async fn grants(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
            self.inner.grants().await
        }
        async fn put_held(&self, id: &str, record: &[u8]) -> Result<(), StoreError> {
            self.inner.put_held(id, record).await
        }
        async fn delete_held(&self, id: &str) -> Result<bool, StoreError> {
            self.inner.delete_held(id).await
        }
        async fn held(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
            self.inner.held().await
        }
        async fn put_config(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable("the disk is full".into()));
            }
            self.inner.put_config(key, value).await
        }
        async fn config(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.config(key).await
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        keystore: Arc<dyn KeyStore>,
        store: Arc<FullDisk>,
        registry: Registry,
        state: CaState,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let keystore: Arc<dyn KeyStore> = Arc::new(
            LocalKeyStore::create(
                &dir.path().join("keys"),
                &Unlock::passphrase("rollover unit tests"),
                Argon2Params::danger_fast_for_tests(),
            )
            .unwrap(),
        );
        let ca = Ca::init(
            keystore.clone(),
            &TrustDomain::new("example.org").unwrap(),
            CaOptions::default(),
            SystemTime::now(),
        )
        .unwrap();
        let store = Arc::new(FullDisk {
            inner: EmbeddedStore::open(dir.path().join("registry.redb")).unwrap(),
            fail: AtomicBool::new(false),
        });
        let registry = Registry::new(store.clone());
        let state = CaState::open(
            Arc::new(ca),
            &registry,
            &Limits::default(),
            CaRollover::default(),
        )
        .await
        .unwrap();
        Fixture {
            _dir: dir,
            keystore,
            store,
            registry,
            state,
        }
    }

    /// The names of the keys in the store.
    fn keys(keystore: &Arc<dyn KeyStore>) -> Vec<KeyName> {
        keystore
            .list()
            .unwrap()
            .into_iter()
            .map(|(name, _)| name)
            .collect()
    }

    fn staged_key(ca: &Ca) -> Option<KeyName> {
        ca.intermediates()
            .into_iter()
            .find(|i| i.role == IntermediateRole::Staged)
            .and_then(|i| i.key)
    }

    #[tokio::test]
    async fn a_staging_the_registry_fails_to_store_is_retried_with_the_same_key() {
        let f = fixture().await;
        let before = keys(&f.keystore);
        assert_eq!(before.len(), 2, "{before:?}");

        // The disk is full: each try fails, as the automatic staging retries every minute.
        f.store.fail.store(true, Ordering::SeqCst);
        for _ in 0..5 {
            let err = stage(&f.state, &f.registry, SystemTime::now())
                .await
                .unwrap_err();
            assert!(err.to_string().contains("the disk is full"), "{err}");
        }
        // One new key, not one per try; nothing stored, nothing in use.
        let during = keys(&f.keystore);
        assert_eq!(during.len(), 3, "one new key for all tries: {during:?}");
        let new_key = during
            .iter()
            .find(|name| !before.contains(name))
            .unwrap()
            .clone();
        assert!(f.registry.config(CA_ROLLOVER_KEY).await.unwrap().is_none());
        assert_eq!(staged_key(&f.state.current()), None);

        // The disk has room again: the next try stores the intermediate made by the first.
        f.store.fail.store(false, Ordering::SeqCst);
        let done = stage(&f.state, &f.registry, SystemTime::now())
            .await
            .unwrap();
        assert!(done.contains("earlier try"), "{done}");
        assert_eq!(staged_key(&f.state.current()), Some(new_key.clone()));
        assert_eq!(keys(&f.keystore).len(), 3);
        assert!(f.state.unstored_slot().is_none());

        // The stored state names it: another hub process loads the same staged intermediate.
        let stored = f.registry.config(CA_ROLLOVER_KEY).await.unwrap().unwrap();
        let (loaded, schedule) = from_stored(
            f.keystore.clone(),
            &f.state.current().to_pem().root,
            CaOptions::default(),
            &stored,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(staged_key(&loaded), Some(new_key));
        assert_eq!(schedule, f.state.schedule());

        // A staging while one is staged is refused, and makes no key.
        let err = stage(&f.state, &f.registry, SystemTime::now())
            .await
            .unwrap_err();
        assert!(matches!(err, RpcError::Precondition(_)), "{err:?}");
        assert_eq!(keys(&f.keystore).len(), 3);
    }

    #[tokio::test]
    async fn a_failed_staging_whose_key_is_gone_is_made_anew() {
        let f = fixture().await;
        f.store.fail.store(true, Ordering::SeqCst);
        stage(&f.state, &f.registry, SystemTime::now())
            .await
            .unwrap_err();
        let first = f
            .state
            .unstored_slot()
            .as_deref()
            .and_then(staged_key)
            .unwrap();
        // Removed from the key store by hand: storing that intermediate would name no key.
        f.keystore.delete(&first).unwrap();

        f.store.fail.store(false, Ordering::SeqCst);
        let done = stage(&f.state, &f.registry, SystemTime::now())
            .await
            .unwrap();
        assert!(!done.contains("earlier try"), "{done}");
        let second = staged_key(&f.state.current()).unwrap();
        assert_ne!(second, first);
        assert!(f.keystore.contains(&second).unwrap());
        assert_eq!(keys(&f.keystore).len(), 3);
    }
}
