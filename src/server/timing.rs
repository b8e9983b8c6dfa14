//! TEI's per-request timing headers, on every inference response: where the time went
//! (milliseconds, whole numbers, as TEI sends them) and how much the request carried.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::Extension;

use crate::inference::Timings;

/// The headers, and the timings themselves for the metrics middleware.
pub fn parts(t: &Timings, device: &str) -> (HeaderMap, Extension<Timings>) {
    (headers(t, device), Extension(*t))
}

/// `x-compute-type` is the device kind (`cpu` / `gpu`); the rest are TEI's numbers.
pub fn headers(t: &Timings, device: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    let kind = if device.starts_with("cuda") {
        "gpu"
    } else {
        "cpu"
    };
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(HeaderName::from_static(name), v);
        }
    };
    put("x-compute-type", kind.to_string());
    put("x-compute-time", t.total.as_millis().to_string());
    put("x-compute-characters", t.characters.to_string());
    put("x-compute-tokens", t.tokens.to_string());
    put("x-total-time", t.total.as_millis().to_string());
    put(
        "x-tokenization-time",
        t.tokenization.as_millis().to_string(),
    );
    put("x-queue-time", t.queue.as_millis().to_string());
    put("x-inference-time", t.inference.as_millis().to_string());
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_header_is_present_in_milliseconds() {
        let t = Timings {
            tokenization: Duration::from_micros(1500),
            queue: Duration::from_millis(3),
            inference: Duration::from_millis(7),
            total: Duration::from_millis(12),
            tokens: 42,
            characters: 100,
            inputs: 1,
            device: Duration::from_millis(7),
        };
        let h = headers(&t, "cuda:0");
        assert_eq!(h["x-compute-type"], "gpu");
        assert_eq!(h["x-total-time"], "12");
        assert_eq!(h["x-tokenization-time"], "1");
        assert_eq!(h["x-queue-time"], "3");
        assert_eq!(h["x-inference-time"], "7");
        assert_eq!(h["x-compute-tokens"], "42");
        assert_eq!(h["x-compute-characters"], "100");
    }
}
