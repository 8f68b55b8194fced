//! State store checks.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use tonic::{Code, Status, transport::Channel};
use tonic_types::{ErrorDetail, StatusExt};

use super::{
    Ctx, Recorder, Verdict, describe, features_check, init_check, ping_check, request, show,
    verdict,
};
use crate::{component::ComponentKind, proto::components as pb};

type Client = pb::state_store_client::StateStoreClient<Channel>;
type TxClient = pb::transactional_state_store_client::TransactionalStateStoreClient<Channel>;

const CHECKS: &[&str] = &[
    "init",
    "features",
    "ping",
    "get-missing",
    "set-get",
    "delete-missing",
    "delete",
    "bulk-set",
    "bulk-get",
    "bulk-delete",
    "etag.changes",
    "etag.set-current",
    "etag.set-stale",
    "etag.delete-stale",
    "etag.bulk-set-stale",
    "etag.bulk-delete-stale",
    "etag.delete-current",
    "etag.error-shape",
    "first-write",
    "transaction.commit",
    "transaction.atomic",
    "ttl.expiry",
    "isolation",
];

const ETAG: &str = "ETAG";
const TRANSACTIONAL: &str = "TRANSACTIONAL";
const TTL: &str = "TTL";

const FIRST_WRITE: i32 = pb::state_options::StateConcurrency::ConcurrencyFirstWrite as i32;
const UNSPECIFIED: i32 = pb::state_options::StateConcurrency::ConcurrencyUnspecified as i32;

/// A store under test: one client, the instance, and the keys written (for clean-up).
struct Store<'a> {
    ctx: &'a Ctx,
    client: Client,
    instance: String,
    written: Vec<(String, String)>,
}

/// One Set, as the checks build them.
#[derive(Default)]
struct Write<'a> {
    etag: Option<&'a str>,
    concurrency: i32,
    metadata: HashMap<String, String>,
}

impl<'a> Write<'a> {
    /// A plain Set carrying `etag`.
    fn etag(etag: &'a str) -> Self {
        Write {
            etag: Some(etag),
            ..Default::default()
        }
    }
}

/// A value as a reason shows it, `none` when there is none.
fn show_or(value: Option<&[u8]>, none: &str) -> String {
    value.map_or(none.into(), show)
}

fn set_request(key: &str, value: &[u8], w: Write<'_>) -> pb::SetRequest {
    pb::SetRequest {
        key: key.to_string(),
        value: value.to_vec(),
        etag: w.etag.map(|e| pb::Etag {
            value: e.to_string(),
        }),
        metadata: w.metadata,
        options: Some(pb::StateOptions {
            concurrency: w.concurrency,
            consistency: 0,
        }),
        content_type: String::new(),
    }
}

fn delete_request(key: &str, etag: Option<&str>) -> pb::DeleteRequest {
    pb::DeleteRequest {
        key: key.to_string(),
        etag: etag.map(|e| pb::Etag {
            value: e.to_string(),
        }),
        metadata: HashMap::new(),
        options: Some(pb::StateOptions {
            concurrency: UNSPECIFIED,
            consistency: 0,
        }),
    }
}

impl Store<'_> {
    async fn get_as(&self, instance: &str, key: &str) -> Result<pb::GetResponse, Status> {
        let req = pb::GetRequest {
            key: key.to_string(),
            metadata: HashMap::new(),
            consistency: 0,
        };
        let mut client = self.client.clone();
        self.ctx
            .call(client.get(request(instance, req)))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn get(&self, key: &str) -> Result<pb::GetResponse, Status> {
        self.get_as(&self.instance, key).await
    }

    async fn set_as(
        &mut self,
        instance: &str,
        key: &str,
        value: &[u8],
        w: Write<'_>,
    ) -> Result<(), Status> {
        self.written.push((instance.to_string(), key.to_string()));
        let mut client = self.client.clone();
        self.ctx
            .call(client.set(request(instance, set_request(key, value, w))))
            .await
            .map(|_| ())
    }

    async fn set(&mut self, key: &str, value: &[u8], w: Write<'_>) -> Result<(), Status> {
        let instance = self.instance.clone();
        self.set_as(&instance, key, value, w).await
    }

    async fn delete(&self, key: &str, etag: Option<&str>) -> Result<(), Status> {
        let mut client = self.client.clone();
        self.ctx
            .call(client.delete(request(&self.instance, delete_request(key, etag))))
            .await
            .map(|_| ())
    }

    /// The stored value: `Ok(None)` when empty (missing).
    /// What `key` holds now, None when it is empty or the Get failed.
    async fn held(&self, key: &str) -> Option<Vec<u8>> {
        self.value(key).await.ok().flatten()
    }

    async fn value(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        match self.get(key).await {
            Ok(r) if r.data.is_empty() => Ok(None),
            Ok(r) => Ok(Some(r.data)),
            Err(s) => Err(format!("Get {key} answered {}", describe(&s))),
        }
    }

    /// The current etag of `key`.
    async fn etag(&self, key: &str) -> Result<String, String> {
        match self.get(key).await {
            Ok(r) => match r.etag {
                Some(e) if !e.value.is_empty() => Ok(e.value),
                _ => Err(format!("Get {key} returned no etag")),
            },
            Err(s) => Err(format!("Get {key} answered {}", describe(&s))),
        }
    }

    async fn init(
        &self,
        instance: &str,
        properties: HashMap<String, String>,
    ) -> Result<(), Status> {
        let req = pb::InitRequest {
            metadata: Some(pb::MetadataRequest { properties }),
        };
        let mut client = self.client.clone();
        self.ctx
            .call(client.init(request(instance, req)))
            .await
            .map(|_| ())
    }

    async fn transact(
        &self,
        operations: Vec<pb::transactional_state_operation::Request>,
    ) -> Result<(), Status> {
        let req = pb::TransactionalStateRequest {
            operations: operations
                .into_iter()
                .map(|r| pb::TransactionalStateOperation { request: Some(r) })
                .collect(),
            metadata: HashMap::new(),
        };
        let mut client = TxClient::new(self.ctx.channel.clone());
        self.ctx
            .call(client.transact(request(&self.instance, req)))
            .await
            .map(|_| ())
    }

    /// Deletes every key written (best effort, errors ignored).
    async fn clean_up(&mut self) {
        let mut written = std::mem::take(&mut self.written);
        written.sort();
        written.dedup();
        for (instance, key) in written {
            let mut client = self.client.clone();
            let _ = self
                .ctx
                .call(client.delete(request(&instance, delete_request(&key, None))))
                .await;
        }
    }
}

pub(super) async fn check(ctx: &Ctx, rec: &mut Recorder) {
    let mut store = Store {
        ctx,
        client: Client::new(ctx.channel.clone()),
        instance: ctx.instance(ComponentKind::State),
        written: Vec::new(),
    };

    let init = store.init(&store.instance, ctx.init_properties());
    if !init_check(rec, &store.instance, CHECKS, init).await {
        return;
    }

    let mut client = store.client.clone();
    let features = request(&store.instance, pb::FeaturesRequest {});
    let features = features_check(
        rec,
        &[ETAG, TRANSACTIONAL, TTL],
        ctx.call(client.features(features)),
    )
    .await;
    let claims = |f: &str| {
        features
            .as_ref()
            .is_some_and(|all| all.iter().any(|x| x == f))
    };
    let unclaimed = |f: &str| match &features {
        Some(_) => format!("does not claim {f}"),
        None => "Features failed, so what is claimed is unknown".to_string(),
    };

    let ping = client.ping(request(&store.instance, pb::PingRequest {}));
    ping_check(ctx, rec, ping).await;

    basics(&mut store, rec, claims(ETAG)).await;
    bulk(&mut store, rec).await;
    if claims(ETAG) {
        etags(&mut store, rec).await;
    } else {
        rec.skip_rest(
            &[
                "etag.changes",
                "etag.set-current",
                "etag.set-stale",
                "etag.delete-stale",
                "etag.bulk-set-stale",
                "etag.bulk-delete-stale",
                "etag.delete-current",
                "etag.error-shape",
                "first-write",
            ],
            &unclaimed(ETAG),
        );
    }
    if claims(TRANSACTIONAL) {
        transactions(&mut store, rec, claims(ETAG), claims(TTL)).await;
    } else {
        rec.skip_rest(
            &["transaction.commit", "transaction.atomic"],
            &unclaimed(TRANSACTIONAL),
        );
    }
    if claims(TTL) {
        ttl(&mut store, rec).await;
    } else {
        rec.skip_rest(&["ttl.expiry"], &unclaimed(TTL));
    }
    isolation(&mut store, rec).await;
    store.clean_up().await;
    rec.skip_rest(CHECKS, "not reached");
}

/// get-missing, set-get, delete-missing, delete.
async fn basics(store: &mut Store<'_>, rec: &mut Recorder, etag_claimed: bool) {
    let ctx = store.ctx;
    let started = Instant::now();
    let missing = ctx.name("never-written");
    let verdict = match store.get(&missing).await {
        Ok(r) if r.data.is_empty() => match r.etag.filter(|e| !e.value.is_empty()) {
            None => Verdict::pass("empty data, no etag, no error"),
            Some(e) => Verdict::pass(format!(
                "empty data, no error (but an etag {:?} for a key that does not exist)",
                e.value
            )),
        },
        Ok(r) => Verdict::fail(format!(
            "Get of a key never written returned data {}",
            show(&r.data)
        )),
        Err(s) => Verdict::fail(format!(
            "Get of a key never written answered {} (daprd expects an empty answer)",
            describe(&s)
        )),
    };
    rec.add("get-missing", started, verdict);

    let started = Instant::now();
    let key = ctx.name("set-get");
    let value = format!("conformance {} value", ctx.run).into_bytes();
    let verdict = match store.set(&key, &value, Write::default()).await {
        Err(s) => Verdict::fail(format!("Set answered {}", describe(&s))),
        Ok(()) => match store.get(&key).await {
            Err(s) => Verdict::fail(format!("Get after Set answered {}", describe(&s))),
            Ok(r) if r.data != value => Verdict::fail(format!(
                "Set {} but Get returned {}",
                show(&value),
                show(&r.data)
            )),
            Ok(r) => match r.etag.filter(|e| !e.value.is_empty()) {
                Some(e) => Verdict::pass(format!("read back, etag {:?}", e.value)),
                None if etag_claimed => {
                    Verdict::fail("read back, but without an etag although ETAG is claimed")
                }
                None => Verdict::pass("read back"),
            },
        },
    };
    let set_ok = verdict.outcome == super::Outcome::Pass;
    rec.add("set-get", started, verdict);

    let started = Instant::now();
    let verdict = match store.delete(&ctx.name("never-written-2"), None).await {
        Ok(()) => Verdict::pass("OK"),
        Err(s) => Verdict::fail(format!(
            "Delete of a key never written answered {} (daprd expects OK)",
            describe(&s)
        )),
    };
    rec.add("delete-missing", started, verdict);

    let started = Instant::now();
    let verdict = if !set_ok {
        Verdict::skip("set-get failed, so there is nothing to delete")
    } else {
        match store.delete(&key, None).await {
            Err(s) => Verdict::fail(format!("Delete answered {}", describe(&s))),
            Ok(()) => match store.value(&key).await {
                Ok(None) => Verdict::pass("gone after Delete"),
                Ok(Some(v)) => Verdict::fail(format!("still returns {} after Delete", show(&v))),
                Err(e) => Verdict::fail(e),
            },
        }
    };
    rec.add("delete", started, verdict);
}

/// bulk-set, bulk-get, bulk-delete.
async fn bulk(store: &mut Store<'_>, rec: &mut Recorder) {
    let ctx = store.ctx;
    let items: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| {
            (
                ctx.name(&format!("bulk-{i}")),
                format!("conformance {} bulk {i}", ctx.run).into_bytes(),
            )
        })
        .collect();
    for (key, _) in &items {
        store.written.push((store.instance.clone(), key.clone()));
    }
    let started = Instant::now();
    let req = pb::BulkSetRequest {
        items: items
            .iter()
            .map(|(k, v)| set_request(k, v, Write::default()))
            .collect(),
        options: None,
    };
    let mut client = store.client.clone();
    let verdict = match ctx
        .call(client.bulk_set(request(&store.instance, req)))
        .await
    {
        Err(s) => Verdict::fail(format!("BulkSet answered {}", describe(&s))),
        Ok(_) => {
            let mut wrong = Vec::new();
            for (key, value) in &items {
                match store.value(key).await {
                    Ok(Some(v)) if &v == value => {}
                    Ok(Some(v)) => wrong.push(format!("{key} holds {}", show(&v))),
                    Ok(None) => wrong.push(format!("{key} is missing")),
                    Err(e) => wrong.push(e),
                }
            }
            if wrong.is_empty() {
                Verdict::pass("3 keys written, each read back with Get")
            } else {
                Verdict::fail(format!("after BulkSet: {}", wrong.join("; ")))
            }
        }
    };
    let set_ok = verdict.outcome == super::Outcome::Pass;
    rec.add("bulk-set", started, verdict);

    let started = Instant::now();
    let missing = ctx.name("bulk-missing");
    let verdict = if !set_ok {
        Verdict::skip("bulk-set failed")
    } else {
        let mut keys: Vec<String> = items.iter().map(|(k, _)| k.clone()).collect();
        keys.push(missing.clone());
        let req = pb::BulkGetRequest {
            items: keys
                .iter()
                .map(|k| pb::GetRequest {
                    key: k.clone(),
                    metadata: HashMap::new(),
                    consistency: 0,
                })
                .collect(),
            options: None,
        };
        let mut client = store.client.clone();
        match ctx
            .call(client.bulk_get(request(&store.instance, req)))
            .await
        {
            Err(s) => Verdict::fail(format!("BulkGet answered {}", describe(&s))),
            Ok(r) => {
                let got = r.into_inner().items;
                let mut wrong = Vec::new();
                for (key, value) in &items {
                    match got.iter().find(|i| &i.key == key) {
                        None => wrong.push(format!("{key} is not in the answer")),
                        Some(i) if !i.error.is_empty() => {
                            wrong.push(format!("{key} has error {:?}", i.error))
                        }
                        Some(i) if &i.data != value => {
                            wrong.push(format!("{key} has {}", show(&i.data)))
                        }
                        Some(_) => {}
                    }
                }
                match got.iter().find(|i| i.key == missing) {
                    Some(i) if !i.error.is_empty() => wrong.push(format!(
                        "the missing key has error {:?} (expected empty data)",
                        i.error
                    )),
                    Some(i) if !i.data.is_empty() => {
                        wrong.push(format!("the missing key has data {}", show(&i.data)))
                    }
                    _ => {}
                }
                if wrong.is_empty() {
                    Verdict::pass("3 keys read back, a missing key empty")
                } else {
                    Verdict::fail(wrong.join("; "))
                }
            }
        }
    };
    rec.add("bulk-get", started, verdict);

    let started = Instant::now();
    let verdict = if !set_ok {
        Verdict::skip("bulk-set failed")
    } else {
        let req = pb::BulkDeleteRequest {
            items: items.iter().map(|(k, _)| delete_request(k, None)).collect(),
            options: None,
        };
        let mut client = store.client.clone();
        match ctx
            .call(client.bulk_delete(request(&store.instance, req)))
            .await
        {
            Err(s) => Verdict::fail(format!("BulkDelete answered {}", describe(&s))),
            Ok(_) => {
                let mut left = Vec::new();
                for (key, _) in &items {
                    match store.value(key).await {
                        Ok(None) => {}
                        Ok(Some(_)) => left.push(format!("{key} is still there")),
                        Err(e) => left.push(e),
                    }
                }
                if left.is_empty() {
                    Verdict::pass("3 keys deleted")
                } else {
                    Verdict::fail(format!("after BulkDelete: {}", left.join("; ")))
                }
            }
        }
    };
    rec.add("bulk-delete", started, verdict);
}

/// How a refusal looks to daprd: `Ok` when it is an etag mismatch daprd recognises.
fn etag_error_shape(status: &Status) -> Result<(), String> {
    let details = status.check_error_details_vec().unwrap_or_default();
    let described = describe(status);
    if status.code() != Code::FailedPrecondition {
        let hint = if status.code() == Code::Aborted {
            " (ABORTED is what daprd answers apps; a component answers FAILED_PRECONDITION)"
        } else {
            ""
        };
        return Err(format!(
            "{described}: the code is not FAILED_PRECONDITION{hint}, so daprd reports a generic error instead of an etag mismatch (409)"
        ));
    }
    match details.as_slice() {
        [ErrorDetail::BadRequest(b)]
            if b.field_violations.len() == 1 && b.field_violations[0].field == "etag" =>
        {
            Ok(())
        }
        [] => Err(format!(
            "{described}: no google.rpc.BadRequest detail with a violation on field \"etag\", so daprd reports a generic error instead of an etag mismatch (409)"
        )),
        _ => Err(format!(
            "{described}: daprd needs exactly one detail, a google.rpc.BadRequest with one violation on field \"etag\" (got {} details)",
            details.len()
        )),
    }
}

/// The etag checks and first-write.
async fn etags(store: &mut Store<'_>, rec: &mut Recorder) {
    let ctx = store.ctx;
    let key = ctx.name("etag");
    let v = |n: u32| format!("conformance {} etag v{n}", ctx.run).into_bytes();

    // etag.changes: v1 → e1, v2 → e2 (must differ).
    let started = Instant::now();
    let mut etags: Option<(String, String)> = None;
    let result = async {
        store
            .set(&key, &v(1), Write::default())
            .await
            .map_err(|s| format!("Set answered {}", describe(&s)))?;
        let e1 = store.etag(&key).await?;
        store
            .set(&key, &v(2), Write::default())
            .await
            .map_err(|s| format!("Set answered {}", describe(&s)))?;
        let e2 = store.etag(&key).await?;
        if e1 == e2 {
            return Err(format!("the etag stayed {e1:?} after a write"));
        }
        etags = Some((e1.clone(), e2.clone()));
        Ok(format!("{e1:?} then {e2:?}"))
    }
    .await;
    rec.add("etag.changes", started, verdict(result));
    let Some((stale, current)) = etags else {
        rec.skip_rest(
            &[
                "etag.set-current",
                "etag.set-stale",
                "etag.delete-stale",
                "etag.bulk-set-stale",
                "etag.bulk-delete-stale",
                "etag.delete-current",
                "etag.error-shape",
            ],
            "etag.changes failed: no two etags to work with",
        );
        first_write(store, rec).await;
        return;
    };

    // etag.set-current: v3 with e2 → OK.
    let started = Instant::now();
    let result = match store.set(&key, &v(3), Write::etag(&current)).await {
        Ok(()) => match store.value(&key).await {
            Ok(Some(got)) if got == v(3) => Ok("accepted and written".to_string()),
            Ok(got) => Err(format!(
                "accepted, but the key holds {}",
                show_or(got.as_deref(), "nothing")
            )),
            Err(e) => Err(e),
        },
        Err(s) => Err(format!(
            "a Set with the current etag {current:?} answered {}",
            describe(&s)
        )),
    };
    rec.add("etag.set-current", started, verdict(result));
    let before = store.held(&key).await;

    // etag.set-stale: v4 with e1 → refused, value unchanged.
    let mut refusals: Vec<(&str, Status)> = Vec::new();
    let started = Instant::now();
    let verdict = match store.set(&key, &v(4), Write::etag(&stale)).await {
        Ok(()) => {
            let now = store.held(&key).await;
            Verdict::fail(format!(
                "a Set with a stale etag ({stale:?}, replaced by a later write) was accepted: the value was overwritten (now {}) although ETAG is claimed",
                show_or(now.as_deref(), "empty")
            ))
        }
        Err(s) => {
            let now = store.held(&key).await;
            let verdict = if now == before {
                Verdict::pass(format!("refused: {}", describe(&s)))
            } else {
                Verdict::fail(format!(
                    "refused ({}), but the value changed anyway (now {})",
                    describe(&s),
                    show_or(now.as_deref(), "empty")
                ))
            };
            refusals.push(("Set", s));
            verdict
        }
    };
    rec.add("etag.set-stale", started, verdict);

    // etag.delete-stale: Delete with e1 → refused, key still there.
    let started = Instant::now();
    let verdict = match store.delete(&key, Some(&stale)).await {
        Ok(()) => {
            let now = store.held(&key).await;
            Verdict::fail(format!(
                "a Delete with a stale etag ({stale:?}) was accepted: {} although ETAG is claimed",
                if now.is_none() {
                    "the key was deleted".to_string()
                } else {
                    "the key survived, but no error was reported".to_string()
                }
            ))
        }
        Err(s) => {
            let verdict = match store.value(&key).await {
                Ok(Some(_)) => Verdict::pass(format!("refused: {}", describe(&s))),
                Ok(None) => Verdict::fail(format!(
                    "refused ({}), but the key was deleted anyway",
                    describe(&s)
                )),
                Err(e) => Verdict::fail(e),
            };
            refusals.push(("Delete", s));
            verdict
        }
    };
    rec.add("etag.delete-stale", started, verdict);

    bulk_stale(store, rec, &mut refusals).await;

    // etag.error-shape: the refusals as daprd reads them.
    let started = Instant::now();
    let verdict = if refusals.is_empty() {
        Verdict::skip("no stale-etag write was refused, so there is no error to inspect")
    } else {
        let problems: Vec<String> = refusals
            .iter()
            .filter_map(|(what, s)| etag_error_shape(s).err().map(|e| format!("{what}: {e}")))
            .collect();
        if problems.is_empty() {
            let what: Vec<&str> = refusals.iter().map(|(w, _)| *w).collect();
            Verdict::pass(format!(
                "{} refusals: FAILED_PRECONDITION with one BadRequest violation on \"etag\"",
                what.join(", ")
            ))
        } else {
            Verdict::fail(problems.join("; "))
        }
    };
    rec.add("etag.error-shape", started, verdict);

    // etag.delete-current: Delete with the current etag → gone (written afresh first, so an
    // earlier check's damage does not carry over).
    let started = Instant::now();
    let written = store
        .set(&key, &v(5), Write::default())
        .await
        .map_err(|s| format!("preparing: Set answered {}", describe(&s)));
    let verdict = match written.and(Ok(())) {
        Err(e) => Err(e),
        Ok(()) => store.etag(&key).await,
    };
    let verdict = match verdict {
        Err(e) => Verdict::fail(e),
        Ok(current) => match store.delete(&key, Some(&current)).await {
            Err(s) => Verdict::fail(format!(
                "a Delete with the current etag {current:?} answered {}",
                describe(&s)
            )),
            Ok(()) => match store.value(&key).await {
                Ok(None) => Verdict::pass("accepted, the key is gone"),
                Ok(Some(_)) => Verdict::fail("accepted, but the key is still there"),
                Err(e) => Verdict::fail(e),
            },
        },
    };
    rec.add("etag.delete-current", started, verdict);

    first_write(store, rec).await;
}

/// etag.bulk-set-stale and etag.bulk-delete-stale: a BulkSet / BulkDelete of two keys, one with a
/// stale etag, is refused and leaves that key alone. The contract has no per-item error for
/// bulk writes and does not make them atomic (daprd's own stores run them item by item), so
/// whether the other item was applied is only reported.
async fn bulk_stale(store: &mut Store<'_>, rec: &mut Recorder, refusals: &mut Vec<(&str, Status)>) {
    let ctx = store.ctx;
    let (a, b) = (ctx.name("bulk-etag-a"), ctx.name("bulk-etag-b"));
    let v = |k: &str, n: u32| format!("conformance {} {k} v{n}", ctx.run).into_bytes();
    let prep = |s: Status| format!("preparing: Set answered {}", describe(&s));
    // a = v1; b = v1 (etag `stale`), then b = v2: `stale` is stale.
    let prepared = async {
        store
            .set(&a, &v("a", 1), Write::default())
            .await
            .map_err(prep)?;
        store
            .set(&b, &v("b", 1), Write::default())
            .await
            .map_err(prep)?;
        let stale = store.etag(&b).await?;
        store
            .set(&b, &v("b", 2), Write::default())
            .await
            .map_err(prep)?;
        Ok::<_, String>(stale)
    }
    .await;

    let started = Instant::now();
    let stale = match prepared {
        Ok(stale) => stale,
        Err(e) => {
            rec.add("etag.bulk-set-stale", started, Verdict::fail(e));
            rec.skip_rest(
                &["etag.bulk-delete-stale"],
                "etag.bulk-set-stale could not prepare its keys",
            );
            return;
        }
    };
    let other = |now: Option<Vec<u8>>, was: Vec<u8>| match now {
        Some(n) if n == was => "the other item was not applied either",
        _ => "the other item was applied (bulk writes need not be atomic)",
    };
    let req = pb::BulkSetRequest {
        items: vec![
            set_request(&a, &v("a", 2), Write::default()),
            set_request(&b, &v("b", 3), Write::etag(&stale)),
        ],
        options: None,
    };
    let mut client = store.client.clone();
    let answer = ctx
        .call(client.bulk_set(request(&store.instance, req)))
        .await;
    let verdict = match store.value(&b).await {
        Err(e) => Verdict::fail(e),
        Ok(now) => match answer {
            Ok(_) => Verdict::fail(format!(
                "a BulkSet with a stale etag ({stale:?}) on one item was accepted: {} although ETAG is claimed",
                if now.as_deref() == Some(&v("b", 2)[..]) {
                    "that item was not written, but no error was reported".to_string()
                } else {
                    format!(
                        "that item was overwritten (now {})",
                        show_or(now.as_deref(), "empty")
                    )
                }
            )),
            Err(s) if now.as_deref() == Some(&v("b", 2)[..]) => {
                let a_now = store.held(&a).await;
                let verdict = Verdict::pass(format!(
                    "refused ({}), the stale item unchanged; {}",
                    describe(&s),
                    other(a_now, v("a", 1))
                ));
                refusals.push(("BulkSet", s));
                verdict
            }
            Err(s) => Verdict::fail(format!(
                "refused ({}), but the item with the stale etag changed anyway (now {})",
                describe(&s),
                show_or(now.as_deref(), "empty")
            )),
        },
    };
    rec.add("etag.bulk-set-stale", started, verdict);

    // a may have been rewritten above; b still holds v2 unless the check failed.
    let started = Instant::now();
    let req = pb::BulkDeleteRequest {
        items: vec![delete_request(&a, None), delete_request(&b, Some(&stale))],
        options: None,
    };
    let b_before = store.held(&b).await;
    let mut client = store.client.clone();
    let answer = ctx
        .call(client.bulk_delete(request(&store.instance, req)))
        .await;
    let verdict = match (store.value(&b).await, answer) {
        (Err(e), _) => Verdict::fail(e),
        (Ok(now), Ok(_)) => Verdict::fail(format!(
            "a BulkDelete with a stale etag ({stale:?}) on one item was accepted: {} although ETAG is claimed",
            if now.is_none() {
                "that item was deleted"
            } else {
                "that item survived, but no error was reported"
            }
        )),
        (Ok(Some(_)), Err(s)) => {
            let a_now = store.held(&a).await;
            let verdict = Verdict::pass(format!(
                "refused ({}), the stale item still there; {}",
                describe(&s),
                if a_now.is_some() {
                    "the other item was not deleted either"
                } else {
                    "the other item was deleted (bulk writes need not be atomic)"
                }
            ));
            refusals.push(("BulkDelete", s));
            verdict
        }
        (Ok(None), Err(s)) if b_before.is_some() => Verdict::fail(format!(
            "refused ({}), but the item with the stale etag was deleted anyway",
            describe(&s)
        )),
        (Ok(None), Err(s)) => Verdict::skip(format!(
            "refused ({}), but the key to protect was already gone (see etag.bulk-set-stale)",
            describe(&s)
        )),
    };
    rec.add("etag.bulk-delete-stale", started, verdict);
}

/// first-write: without an etag, a first-write Set creates a key but does not overwrite it.
async fn first_write(store: &mut Store<'_>, rec: &mut Recorder) {
    let ctx = store.ctx;
    let key = ctx.name("first-write");
    let one = format!("conformance {} first", ctx.run).into_bytes();
    let two = format!("conformance {} second", ctx.run).into_bytes();
    let started = Instant::now();
    let fw = || Write {
        concurrency: FIRST_WRITE,
        ..Default::default()
    };
    let verdict = match store.set(&key, &one, fw()).await {
        Err(s) => Verdict::fail(format!(
            "a first-write Set of a new key without an etag answered {}",
            describe(&s)
        )),
        Ok(()) => match store.set(&key, &two, fw()).await {
            Ok(()) => Verdict::fail(format!(
                "a second first-write Set without an etag overwrote the key (now {}); with ETAG claimed, first-write must not replace an existing key",
                store
                    .value(&key)
                    .await
                    .ok()
                    .flatten()
                    .map_or("empty".into(), |v| show(&v))
            )),
            Err(s) => match store.value(&key).await {
                Ok(Some(v)) if v == one => Verdict::pass(format!(
                    "created, then the overwrite was refused: {}",
                    describe(&s)
                )),
                Ok(v) => Verdict::fail(format!(
                    "the overwrite was refused ({}), but the key holds {}",
                    describe(&s),
                    show_or(v.as_deref(), "nothing")
                )),
                Err(e) => Verdict::fail(e),
            },
        },
    };
    rec.add("first-write", started, verdict);
}

fn tx_set(key: &str, value: &[u8], w: Write<'_>) -> pb::transactional_state_operation::Request {
    pb::transactional_state_operation::Request::Set(set_request(key, value, w))
}

/// transaction.commit and transaction.atomic.
async fn transactions(store: &mut Store<'_>, rec: &mut Recorder, etag: bool, ttl: bool) {
    let ctx = store.ctx;
    let (a, b, gone) = (ctx.name("tx-a"), ctx.name("tx-b"), ctx.name("tx-deleted"));
    let va = format!("conformance {} tx a", ctx.run).into_bytes();
    let vb = format!("conformance {} tx b", ctx.run).into_bytes();
    let started = Instant::now();
    let result = async {
        store
            .set(&gone, b"to be deleted", Write::default())
            .await
            .map_err(|s| format!("preparing: Set answered {}", describe(&s)))?;
        store.written.push((store.instance.clone(), a.clone()));
        store.written.push((store.instance.clone(), b.clone()));
        store
            .transact(vec![
                tx_set(&a, &va, Write::default()),
                tx_set(&b, &vb, Write::default()),
                pb::transactional_state_operation::Request::Delete(delete_request(&gone, None)),
            ])
            .await
            .map_err(|s| {
                if s.code() == Code::Unimplemented {
                    format!(
                        "TRANSACTIONAL is claimed but TransactionalStateStore/Transact answered {}",
                        describe(&s)
                    )
                } else {
                    format!(
                        "Transact of two sets and a delete answered {}",
                        describe(&s)
                    )
                }
            })?;
        let mut wrong = Vec::new();
        for (key, want) in [(&a, Some(&va)), (&b, Some(&vb)), (&gone, None)] {
            let got = store.value(key).await?;
            if got.as_ref() != want {
                wrong.push(format!(
                    "{key} holds {}",
                    show_or(got.as_deref(), "nothing")
                ));
            }
        }
        if wrong.is_empty() {
            Ok("two sets and a delete applied".to_string())
        } else {
            Err(format!("Transact answered OK, but {}", wrong.join("; ")))
        }
    }
    .await;
    rec.add("transaction.commit", started, verdict(result));

    let started = Instant::now();
    if !etag && !ttl {
        rec.add(
            "transaction.atomic",
            started,
            Verdict::skip(
                "needs ETAG (a stale etag) or TTL (an invalid ttlInSeconds) to make one operation fail",
            ),
        );
        return;
    }
    let (fresh, held) = (ctx.name("tx-fresh"), ctx.name("tx-held"));
    let before = format!("conformance {} before", ctx.run).into_bytes();
    let after = format!("conformance {} in transaction", ctx.run).into_bytes();
    let result = async {
        let prep = |s: Status| format!("preparing: {}", describe(&s));
        store.set(&held, &before, Write::default()).await.map_err(prep)?;
        let (failing, why) = if etag {
            let stale = store.etag(&held).await?;
            store.set(&held, &before, Write::default()).await.map_err(prep)?;
            (
                tx_set(&held, &after, Write::etag(&stale)),
                format!("a stale etag ({stale:?})"),
            )
        } else {
            let metadata = HashMap::from([("ttlInSeconds".to_string(), "not-a-number".to_string())]);
            (
                tx_set(&held, &after, Write {
                    metadata,
                    ..Default::default()
                }),
                "ttlInSeconds \"not-a-number\"".to_string(),
            )
        };
        store.written.push((store.instance.clone(), fresh.clone()));
        let result = store
            .transact(vec![tx_set(&fresh, &after, Write::default()), failing])
            .await;
        let fresh_now = store.value(&fresh).await?;
        let held_now = store.value(&held).await?;
        let state = |k: &str, v: &Option<Vec<u8>>| {
            format!("{k} holds {}", show_or(v.as_deref(), "nothing"))
        };
        match result {
            Ok(()) => Err(format!(
                "a Transact whose second operation has {why} was accepted: {}, {}",
                state(&fresh, &fresh_now),
                state(&held, &held_now)
            )),
            Err(s) => {
                let mut applied = Vec::new();
                if fresh_now.is_some() {
                    applied.push(format!(
                        "its first operation was applied ({})",
                        state(&fresh, &fresh_now)
                    ));
                }
                if held_now.as_ref() != Some(&before) {
                    applied.push(format!(
                        "the failing operation changed {}",
                        state(&held, &held_now)
                    ));
                }
                if applied.is_empty() {
                    Ok(format!(
                        "refused ({}) with nothing applied",
                        describe(&s)
                    ))
                } else {
                    Err(format!(
                        "Transact was refused ({}) because of {why}, but {}: TRANSACTIONAL promises all or nothing",
                        describe(&s),
                        applied.join(" and ")
                    ))
                }
            }
        }
    }
    .await;
    rec.add("transaction.atomic", started, verdict(result));
}

/// ttl.expiry: a key set with `ttlInSeconds: N` (`conformance.ttl`, default 2) is read back, is
/// still there N − 1 s after the Set (whole-second expiry clocks may round down by up to a
/// second), and is gone after N s + `conformance.wait`.
async fn ttl(store: &mut Store<'_>, rec: &mut Recorder) {
    let ctx = store.ctx;
    let key = ctx.name("ttl");
    let value = format!("conformance {} ttl", ctx.run).into_bytes();
    let ttl = ctx.settings.ttl;
    let secs = ttl.as_secs();
    let started = Instant::now();
    let metadata = HashMap::from([("ttlInSeconds".to_string(), secs.to_string())]);
    let result = async {
        // The store's clock starts between `sent` and the answer: times measured from `sent`
        // never call an honest expiry early.
        let sent = Instant::now();
        store
            .set(&key, &value, Write {
                metadata,
                ..Default::default()
            })
            .await
            .map_err(|s| format!("Set with ttlInSeconds {secs} answered {}", describe(&s)))?;
        let early = ttl - Duration::from_secs(1);
        let deadline = (Instant::now() + ttl + ctx.settings.wait).min(ctx.deadline);
        let mut seen = false;
        let mut first_check = None;
        loop {
            let checked = sent.elapsed();
            first_check.get_or_insert(checked);
            match store.value(&key).await? {
                Some(v) if v == value => seen = true,
                Some(v) => {
                    return Err(format!(
                        "Set {} with ttlInSeconds {secs}, but Get returned {}",
                        show(&value),
                        show(&v)
                    ));
                }
                None if checked < early => {
                    return Err(format!(
                        "{} {} ms after the Set, before its TTL of {secs} s (less 1 s for whole-second clocks)",
                        if seen { "gone" } else { "never read back; empty" },
                        checked.as_millis()
                    ));
                }
                None if !seen => {
                    return Err(format!(
                        "never read back: the first Get came {} ms after the Set and found nothing, so the key may never have been written (TTL {secs} s; a larger conformance.ttl gives a slow store more time)",
                        first_check.unwrap_or(checked).as_millis()
                    ));
                }
                None => {
                    return Ok(format!(
                        "read back, then gone {} ms after the Set (TTL {secs} s)",
                        sent.elapsed().as_millis()
                    ));
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "still there {} ms after a Set with ttlInSeconds {secs} (waited the TTL + conformance.wait {:?})",
                    sent.elapsed().as_millis(),
                    ctx.settings.wait
                ));
            }
            // Polled every 100 ms (not slept through): the first Get comes at once.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    .await;
    rec.add("ttl.expiry", started, verdict(result));
}

/// isolation: a key written under one instance is not visible under another.
async fn isolation(store: &mut Store<'_>, rec: &mut Recorder) {
    let ctx = store.ctx;
    let other = format!("{}-b", store.instance);
    let mut properties = ctx.init_properties();
    for (k, v) in &ctx.settings.isolation {
        properties.insert(k.clone(), v.clone());
    }
    let configured = !ctx.settings.isolation.is_empty();
    let started = Instant::now();
    if let Err(s) = store.init(&other, properties).await {
        rec.add(
            "isolation",
            started,
            Verdict::fail(format!(
                "Init of a second instance {other} answered {}",
                describe(&s)
            )),
        );
        return;
    }
    let key = ctx.name("isolation");
    let va = format!("conformance {} instance a", ctx.run).into_bytes();
    let vb = format!("conformance {} instance b", ctx.run).into_bytes();
    let instance = store.instance.clone();
    let verdict = async {
        store
            .set_as(&instance, &key, &va, Write::default())
            .await
            .map_err(|s| format!("Set under {instance} answered {}", describe(&s)))?;
        let seen_b = store
            .get_as(&other, &key)
            .await
            .map_err(|s| format!("Get under {other} answered {}", describe(&s)))?
            .data;
        store
            .set_as(&other, &key, &vb, Write::default())
            .await
            .map_err(|s| format!("Set under {other} answered {}", describe(&s)))?;
        let seen_a = store
            .get_as(&instance, &key)
            .await
            .map_err(|s| format!("Get under {instance} answered {}", describe(&s)))?
            .data;
        let leaks: Vec<String> = [
            (!seen_b.is_empty()).then(|| format!("{other} sees {}", show(&seen_b))),
            (seen_a != va).then(|| format!("{instance} now reads {}", show(&seen_a))),
        ]
        .into_iter()
        .flatten()
        .collect();
        Ok::<_, String>(leaks)
    }
    .await;
    let verdict = match verdict {
        Err(e) => Verdict::fail(e),
        Ok(leaks) if leaks.is_empty() => Verdict::pass(if configured {
            format!(
                "{instance} and {other} (Init'ed with the conformance.isolation.* properties) keep separate data"
            )
        } else {
            format!("{instance} and {other} keep separate data")
        }),
        Ok(leaks) if configured => Verdict::fail(format!(
            "a key written under one instance is visible under the other, although {other} was Init'ed with the conformance.isolation.* properties: {}",
            leaks.join("; ")
        )),
        Ok(leaks) => Verdict::skip(format!(
            "both instances got the same Init properties and share data ({}): legitimate for a shared backend; give conformance.isolation.KEY=VALUE to point the second instance elsewhere",
            leaks.join("; ")
        )),
    };
    rec.add("isolation", started, verdict);
}
