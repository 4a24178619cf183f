//! A small client for Prometheus' HTTP API: instant queries, range queries and the
//! series endpoint — what the analyzer (and the tests that check it) need.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Why a Prometheus request failed.
#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    #[error("cannot reach Prometheus at {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    /// It took the connection (or the request) and did not answer in time: a hung
    /// Prometheus, or one too loaded to answer.
    #[error("Prometheus at {url} did not answer within {timeout:?} (hung or overloaded)")]
    TimedOut { url: String, timeout: Duration },
    #[error("Prometheus rejected `{query}`: {message}")]
    Rejected { query: String, message: String },
}

/// Labels of one series.
pub type Labels = BTreeMap<String, String>;

/// One series of an instant query.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: Labels,
    pub value: f64,
}

/// One series of a range query: its samples in time order.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub labels: Labels,
    pub values: Vec<(f64, f64)>,
}

#[derive(Clone)]
pub struct Prometheus {
    http: reqwest::Client,
    base: String,
    timeout: Duration,
}

#[derive(Deserialize)]
struct Answer<T> {
    status: String,
    #[serde(default = "Option::default")]
    data: Option<T>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct VectorData<V> {
    result: Vec<RawSeries<V>>,
}

#[derive(Deserialize)]
struct RawSeries<V> {
    metric: Labels,
    #[serde(alias = "values")]
    value: V,
}

fn seconds(at: DateTime<Utc>) -> String {
    format!("{:.3}", at.timestamp_millis() as f64 / 1000.0)
}

fn number(text: &str) -> f64 {
    text.parse().unwrap_or(f64::NAN)
}

impl Prometheus {
    /// A client of the Prometheus at `base`; each request may take `timeout`.
    pub fn new(base: &str, timeout: Duration) -> Self {
        // The process's one rustls crypto provider (ring); again is a no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .expect("HTTP client");
        Self {
            http,
            base: base.trim_end_matches('/').to_string(),
            timeout,
        }
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        params: &[(&str, String)],
        what: &str,
    ) -> Result<T, PrometheusError> {
        let url = format!("{}{path}", self.base);
        let unreachable = |source: reqwest::Error| {
            if source.is_timeout() {
                PrometheusError::TimedOut {
                    url: self.base.clone(),
                    timeout: self.timeout,
                }
            } else {
                PrometheusError::Unreachable {
                    url: self.base.clone(),
                    source,
                }
            }
        };
        let response = self
            .http
            .get(&url)
            .query(params)
            .send()
            .await
            .map_err(unreachable)?;
        let answer: Answer<T> = response.json().await.map_err(unreachable)?;
        match (answer.status.as_str(), answer.data) {
            ("success", Some(data)) => Ok(data),
            _ => Err(PrometheusError::Rejected {
                query: what.to_string(),
                message: answer
                    .error
                    .unwrap_or_else(|| "no data in the answer".into()),
            }),
        }
    }

    /// An instant query at `at` (now when `None`).
    pub async fn query(
        &self,
        promql: &str,
        at: Option<DateTime<Utc>>,
    ) -> Result<Vec<Sample>, PrometheusError> {
        let mut params = vec![("query", promql.to_string())];
        if let Some(at) = at {
            params.push(("time", seconds(at)));
        }
        let data: VectorData<(f64, String)> = self.get("/api/v1/query", &params, promql).await?;
        Ok(data
            .result
            .into_iter()
            .map(|s| Sample {
                labels: s.metric,
                value: number(&s.value.1),
            })
            .collect())
    }

    /// A range query from `start` to `end` every `step`.
    pub async fn query_range(
        &self,
        promql: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        step: Duration,
    ) -> Result<Vec<Series>, PrometheusError> {
        let params = [
            ("query", promql.to_string()),
            ("start", seconds(start)),
            ("end", seconds(end)),
            ("step", format!("{:.3}", step.as_secs_f64())),
        ];
        let data: VectorData<Vec<(f64, String)>> =
            self.get("/api/v1/query_range", &params, promql).await?;
        Ok(data
            .result
            .into_iter()
            .map(|s| Series {
                labels: s.metric,
                values: s.value.into_iter().map(|(t, v)| (t, number(&v))).collect(),
            })
            .collect())
    }

    /// Every distinct series matching `selector` with samples between `start` and
    /// `end` (true distinct series, metric names included).
    pub async fn series(
        &self,
        selector: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<Vec<Labels>, PrometheusError> {
        let params = [
            ("match[]", selector.to_string()),
            ("start", seconds(start)),
            ("end", seconds(end)),
        ];
        self.get("/api/v1/series", &params, selector).await
    }
}
