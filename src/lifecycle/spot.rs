//! Cloud interruption notices from instance metadata (AWS IMDSv2, GCP, Azure Scheduled Events).
//!
//! Optional and best effort: from a pod, IMDS is often unreachable (AWS's default hop limit of 1
//! stops the IMDSv2 token PUT from leaving the pod network), so SIGTERM remains the primary
//! signal. A notice turns readiness red and makes offline work checkpoint; the pod keeps serving
//! what still arrives and waits for SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde::Deserialize;

use super::{InterruptionNotice, Lifecycle};
use crate::config::SpotProvider;

#[derive(Debug, thiserror::Error)]
pub enum SpotError {
    #[error("metadata request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("unexpected metadata answer: {0}")]
    Unexpected(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Provider {
    Aws,
    Gcp,
    Azure,
}

impl Provider {
    fn name(self) -> &'static str {
        match self {
            Provider::Aws => "aws",
            Provider::Gcp => "gcp",
            Provider::Azure => "azure",
        }
    }

    fn default_base(self) -> &'static str {
        match self {
            Provider::Aws | Provider::Azure => "http://169.254.169.254",
            Provider::Gcp => "http://metadata.google.internal",
        }
    }
}

/// Polls until a notice arrives; never returns an error to the caller, only logs.
pub async fn watch(
    lifecycle: Arc<Lifecycle>,
    provider: SpotProvider,
    base_url: Option<String>,
    interval: Duration,
) {
    let candidates: &[Provider] = match provider {
        SpotProvider::Off => return,
        SpotProvider::Aws => &[Provider::Aws],
        SpotProvider::Gcp => &[Provider::Gcp],
        SpotProvider::Azure => &[Provider::Azure],
        SpotProvider::Auto => &[Provider::Aws, Provider::Gcp, Provider::Azure],
    };
    tracing::info!(
        "spot interruption polling on; note that IMDS is often unreachable from pods (AWS hop \
         limit 1): SIGTERM remains the primary signal"
    );
    let client = match Client::builder()
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot build the metadata client; spot polling off");
            return;
        }
    };
    // With `auto`, the first provider whose metadata answers wins.
    let mut chosen = None;
    for &p in candidates {
        let base = base_url
            .clone()
            .unwrap_or_else(|| p.default_base().to_string());
        match poll_once(&client, p, &base).await {
            Ok(first) => {
                tracing::info!(provider = p.name(), base = %base, "metadata service answers");
                chosen = Some((p, base, first));
                break;
            }
            Err(e) => tracing::debug!(provider = p.name(), error = %e, "metadata probe failed"),
        }
    }
    let Some((p, base, first)) = chosen else {
        tracing::warn!(
            "no instance metadata service answered; spot notices are off (SIGTERM still drains)"
        );
        return;
    };
    let mut result = first;
    let mut failures = 0u32;
    loop {
        match result {
            Ok(Some(notice)) => {
                lifecycle.interruption_notice(notice);
                return;
            }
            Ok(None) => failures = 0,
            Err(e) => {
                failures += 1;
                // Log the first failure and then every 60th, not every poll.
                if failures == 1 || failures.is_multiple_of(60) {
                    tracing::warn!(provider = p.name(), error = %e, failures, "metadata poll failed");
                }
            }
        }
        tokio::time::sleep(interval).await;
        result = poll_once(&client, p, &base).await.and_then(|r| r);
    }
}

/// Outer error: the service did not answer (used by `auto`); inner: one poll's outcome.
async fn poll_once(
    client: &Client,
    p: Provider,
    base: &str,
) -> Result<Result<Option<InterruptionNotice>, SpotError>, SpotError> {
    let base = base.trim_end_matches('/');
    match p {
        Provider::Aws => {
            let token = client
                .put(format!("{base}/latest/api/token"))
                .header("X-aws-ec2-metadata-token-ttl-seconds", "21600")
                .send()
                .await?
                .error_for_status()?
                .text()
                .await?;
            Ok(aws(client, base, &token).await)
        }
        Provider::Gcp => {
            let resp = client
                .get(format!("{base}/computeMetadata/v1/instance/preempted"))
                .header("Metadata-Flavor", "Google")
                .send()
                .await?
                .error_for_status()?;
            let body = resp.text().await?;
            Ok(Ok((body.trim().eq_ignore_ascii_case("TRUE")).then(|| {
                InterruptionNotice {
                    provider: "gcp".into(),
                    action: "preempted".into(),
                    // GKE spot pods get about 15 s after the notice.
                    deadline_unix: Some(super::unix_now() + 15.0),
                }
            })))
        }
        Provider::Azure => {
            let resp = client
                .get(format!(
                    "{base}/metadata/scheduledevents?api-version=2020-07-01"
                ))
                .header("Metadata", "true")
                .send()
                .await?
                .error_for_status()?;
            let doc: AzureEvents = resp.json().await?;
            Ok(Ok(doc
                .events
                .into_iter()
                .find(|e| e.event_type == "Preempt")
                .map(|e| InterruptionNotice {
                    provider: "azure".into(),
                    action: "Preempt".into(),
                    deadline_unix: e
                        .not_before
                        .as_deref()
                        .and_then(|t| httpdate::parse_http_date(t).ok())
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| d.as_secs_f64()),
                })))
        }
    }
}

#[derive(Deserialize)]
struct AwsAction {
    action: String,
    time: String,
}

#[derive(Deserialize)]
struct AzureEvents {
    #[serde(rename = "Events", default)]
    events: Vec<AzureEvent>,
}

#[derive(Deserialize)]
struct AzureEvent {
    #[serde(rename = "EventType")]
    event_type: String,
    #[serde(rename = "NotBefore")]
    not_before: Option<String>,
}

async fn aws(
    client: &Client,
    base: &str,
    token: &str,
) -> Result<Option<InterruptionNotice>, SpotError> {
    let get = |path: &str| {
        client
            .get(format!("{base}/latest/meta-data/{path}"))
            .header("X-aws-ec2-metadata-token", token)
            .send()
    };
    let resp = get("spot/instance-action").await?;
    if resp.status() == StatusCode::OK {
        let a: AwsAction = resp
            .json()
            .await
            .map_err(|e| SpotError::Unexpected(e.to_string()))?;
        let deadline = humantime::parse_rfc3339_weak(&a.time)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs_f64());
        return Ok(Some(InterruptionNotice {
            provider: "aws".into(),
            action: a.action,
            deadline_unix: deadline,
        }));
    }
    if resp.status() != StatusCode::NOT_FOUND {
        return Err(SpotError::Unexpected(format!(
            "spot/instance-action answered {}",
            resp.status()
        )));
    }
    // A rebalance recommendation is an early warning, not an interruption: log it once.
    static REBALANCE_SEEN: std::sync::atomic::AtomicBool =
        std::sync::atomic::AtomicBool::new(false);
    if let Ok(r) = get("events/recommendations/rebalance").await {
        if r.status() == StatusCode::OK
            && !REBALANCE_SEEN.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!("AWS rebalance recommendation: this spot instance is at elevated risk of interruption");
        }
    }
    Ok(None)
}
