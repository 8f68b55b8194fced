//! Secret store checks.

use std::{collections::HashMap, time::Instant};

use tonic::{Code, transport::Channel};

use super::{Ctx, Recorder, Verdict, describe, features_check, init_check, ping_check, request};
use crate::{component::ComponentKind, proto::components as pb};

type Client = pb::secret_store_client::SecretStoreClient<Channel>;

const CHECKS: &[&str] = &[
    "init",
    "features",
    "ping",
    "get-missing",
    "bulk-get",
    "get-known",
];

pub(super) async fn check(ctx: &Ctx, rec: &mut Recorder) {
    let instance = ctx.instance(ComponentKind::SecretStore);
    let mut client = Client::new(ctx.channel.clone());

    let init = pb::SecretStoreInitRequest {
        metadata: ctx.init_metadata(),
    };
    if !init_check(
        rec,
        &instance,
        CHECKS,
        ctx.call(client.init(request(&instance, init))),
    )
    .await
    {
        return;
    }

    // No check tells MULTIPLE_KEY_VALUES_PER_SECRET apart from one value per secret.
    let features = request(&instance, pb::FeaturesRequest {});
    features_check(rec, &[], ctx.call(client.features(features))).await;

    ping_check(
        ctx,
        rec,
        client.ping(request(&instance, pb::PingRequest {})),
    )
    .await;

    let get = |key: String| {
        let mut client = client.clone();
        let instance = instance.clone();
        async move {
            let req = pb::GetSecretRequest {
                key,
                metadata: HashMap::new(),
            };
            ctx.call(client.get(request(&instance, req)))
                .await
                .map(|r| r.into_inner().data)
        }
    };

    let started = Instant::now();
    let verdict = match get(ctx.name("no-such-secret")).await {
        Err(s) if s.code() == Code::NotFound => Verdict::pass(format!("refused: {}", describe(&s))),
        Err(s)
            if matches!(
                s.code(),
                Code::Unavailable | Code::DeadlineExceeded | Code::Unimplemented
            ) =>
        {
            Verdict::fail(format!(
                "Get of a secret that does not exist answered {}, which says nothing about the secret (expected NOT_FOUND, another refusal, or an empty answer)",
                describe(&s)
            ))
        }
        Err(s) => Verdict::pass(format!(
            "refused: {} (NOT_FOUND is preferred)",
            describe(&s)
        )),
        Ok(data) if data.values().all(String::is_empty) => Verdict::pass(if data.is_empty() {
            "an empty answer".to_string()
        } else {
            "an answer with empty values (as Dapr's local.env)".to_string()
        }),
        Ok(data) => Verdict::fail(format!(
            "Get of a secret that does not exist answered values for {}",
            data.keys().cloned().collect::<Vec<_>>().join(", ")
        )),
    };
    rec.add("get-missing", started, verdict);

    let started = Instant::now();
    let mut bulk_client = client.clone();
    let req = pb::BulkGetSecretRequest {
        metadata: HashMap::new(),
    };
    let bulk = match ctx
        .call(bulk_client.bulk_get(request(&instance, req)))
        .await
    {
        Ok(r) => {
            let data = r.into_inner().data;
            rec.add(
                "bulk-get",
                started,
                Verdict::pass(format!("{} secrets", data.len())),
            );
            Some(data)
        }
        Err(s) => {
            rec.add(
                "bulk-get",
                started,
                Verdict::fail(format!("BulkGet answered {}", describe(&s))),
            );
            None
        }
    };

    let started = Instant::now();
    let known = ctx
        .settings
        .secret_key
        .clone()
        .or_else(|| bulk.as_ref().and_then(|b| b.keys().min().cloned()));
    let Some(name) = known else {
        let why = if bulk.is_some() {
            "BulkGet returned no secrets and conformance.secretKey is not given"
        } else {
            "BulkGet failed and conformance.secretKey is not given"
        };
        rec.add("get-known", started, Verdict::skip(why));
        return;
    };
    let from_bulk = bulk.as_ref().and_then(|b| b.get(&name)).map(|s| &s.secrets);
    let verdict = match get(name.clone()).await {
        Err(s) => Verdict::fail(format!("Get {name:?} answered {}", describe(&s))),
        Ok(data) if data.is_empty() => Verdict::fail(format!("Get {name:?} answered no values")),
        Ok(data) => match from_bulk {
            Some(b) if *b == data => Verdict::pass(format!(
                "Get {name:?} answered the same {} value(s) as BulkGet",
                data.len()
            )),
            Some(b) => {
                let mut keys: Vec<&String> = data.keys().chain(b.keys()).collect();
                keys.sort();
                keys.dedup();
                let differ: Vec<&str> = keys
                    .into_iter()
                    .filter(|k| data.get(*k) != b.get(*k))
                    .map(String::as_str)
                    .collect();
                Verdict::fail(format!(
                    "Get {name:?} and BulkGet disagree on {} (values not shown)",
                    differ.join(", ")
                ))
            }
            None if bulk.is_some() => Verdict::fail(format!(
                "Get {name:?} answered {} value(s), but BulkGet does not list it",
                data.len()
            )),
            None => Verdict::pass(format!("Get {name:?} answered {} value(s)", data.len())),
        },
    };
    rec.add("get-known", started, verdict);
}
