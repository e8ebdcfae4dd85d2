//! The two text forms of a scrape — Prometheus text exposition format 0.0.4 and OpenMetrics
//! 1.0 — written from the same values, and the choice between them by the scraper's `Accept`.
//!
//! Written here rather than by a crate: prometheus-client (which cb used) writes OpenMetrics
//! only, and its families and histograms give their values to no other encoder. A
//! Prometheus-text client fed OpenMetrics (Python's `text_string_to_metric_families`, agents
//! that speak 0.0.4 only) reads every counter as empty, because the two forms name a counter
//! family differently. What differs is little, and all of it is in this file:
//!
//! | | text 0.0.4 | OpenMetrics 1.0 |
//! |---|---|---|
//! | a counter's `# HELP`/`# TYPE` name | `x_total`, as its sample | `x`; the sample is `x_total` |
//! | `# UNIT x_bytes bytes` | not written | written |
//! | `# HELP` escapes | `\\` and `\n` | `\\`, `\n` and `\"` |
//! | the end | nothing | `# EOF` |
//!
//! Samples are written alike: `x_total`, `x_bucket{le="…"}` (cumulative, ending with
//! `+Inf`), `x_count`, `x_sum`; label values escape `\\`, `\"` and newlines; a float has a
//! decimal point or an exponent (`1.0`, `0.005`, `1e-7`), and `+Inf`, `-Inf`, `NaN`.

use std::fmt::Write;

/// A text form of the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text exposition format 0.0.4: the default.
    Text,
    /// OpenMetrics 1.0 text, for a scraper whose `Accept` asks for it.
    OpenMetrics,
}

impl Format {
    /// The form a scraper gets for its `Accept` header: OpenMetrics when it accepts
    /// `application/openmetrics-text` (version 1.0.0, or none named) at least as much as
    /// text 0.0.4 — as Prometheus asks, `application/openmetrics-text;version=1.0.0,…,
    /// text/plain;version=0.0.4;q=0.5,*/*;q=0.1` — and text 0.0.4 otherwise: with no
    /// `Accept`, for `*/*`, and for anything unreadable or that cb cannot write (an answer in
    /// the default form serves a client better than a 406).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Text;
        };
        let (mut openmetrics, mut text) = (0.0f32, 0.0f32);
        for range in accept.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            let mut q = 1.0f32;
            let mut version = None;
            for param in parts {
                let Some((key, value)) = param.split_once('=') else {
                    continue;
                };
                let value = value.trim().trim_matches('"');
                match key.trim().to_ascii_lowercase().as_str() {
                    // RFC 9110: 0 to 1; anything else is not a weight, and the range is
                    // taken as not acceptable rather than guessed at.
                    "q" => {
                        q = value
                            .parse::<f32>()
                            .ok()
                            .filter(|q| (0.0..=1.0).contains(q))
                            .unwrap_or(0.0)
                    }
                    "version" => version = Some(value.to_owned()),
                    _ => {}
                }
            }
            match (media.as_str(), version.as_deref()) {
                ("application/openmetrics-text", None | Some("1.0.0")) => {
                    openmetrics = openmetrics.max(q)
                }
                ("text/plain", None | Some("0.0.4")) | ("text/*" | "*/*", _) => text = text.max(q),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= text {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    /// The `Content-Type` of an answer in this form.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// A metric family's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (from 0 at cbd's start); its sample is `NAME_total`.
    Counter,
    /// A value now.
    Gauge,
    /// Observations in cumulative buckets, with their count and sum.
    Histogram,
}

/// A scrape's text, family by family. Each family is announced ([`Exposition::family`]) and
/// its samples follow, so that every sample sits under its own family's `# TYPE`.
pub struct Exposition {
    out: String,
    format: Format,
}

impl Exposition {
    /// An empty scrape in `format`.
    pub fn new(format: Format) -> Exposition {
        Exposition {
            out: String::with_capacity(16 * 1024),
            format,
        }
    }

    /// Announces a family: `name` without `_total` (a counter's samples add it), ending with
    /// `_UNIT` when it has a unit. `help` is one line of text.
    pub fn family(&mut self, name: &str, kind: Kind, unit: Option<&str>, help: &str) {
        debug_assert!(valid_name(name), "{name}");
        debug_assert!(
            unit.is_none_or(|u| name.ends_with(&format!("_{u}"))),
            "{name}"
        );
        let (named, kind_name) = match (kind, self.format) {
            (Kind::Counter, Format::Text) => (format!("{name}_total"), "counter"),
            (Kind::Counter, Format::OpenMetrics) => (name.to_owned(), "counter"),
            (Kind::Gauge, _) => (name.to_owned(), "gauge"),
            (Kind::Histogram, _) => (name.to_owned(), "histogram"),
        };
        self.out.push_str("# HELP ");
        self.out.push_str(&named);
        self.out.push(' ');
        for c in help.chars() {
            match c {
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                '"' if self.format == Format::OpenMetrics => self.out.push_str("\\\""),
                c => self.out.push(c),
            }
        }
        self.out.push('\n');
        let _ = writeln!(self.out, "# TYPE {named} {kind_name}");
        if let (Some(unit), Format::OpenMetrics) = (unit, self.format) {
            let _ = writeln!(self.out, "# UNIT {named} {unit}");
        }
    }

    /// One counter sample of the family `name`.
    pub fn counter(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.out.push_str(name);
        self.out.push_str("_total");
        self.labels(labels, None);
        let _ = writeln!(self.out, " {value}");
    }

    /// One gauge sample of the family `name`.
    pub fn gauge(&mut self, name: &str, labels: &[(&str, &str)], value: i64) {
        self.out.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.out, " {value}");
    }

    /// One gauge sample of the family `name`, a float.
    pub fn gauge_f64(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        self.labels(labels, None);
        self.out.push(' ');
        self.float(value);
        self.out.push('\n');
    }

    /// One histogram of the family `name`: `cumulative[i]` observations were at most
    /// `bounds[i]`, and the last entry (one more than the bounds) counts them all.
    pub fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        bounds: &[f64],
        cumulative: &[u64],
        sum: f64,
    ) {
        debug_assert_eq!(bounds.len() + 1, cumulative.len());
        let mut le = String::new();
        for (i, count) in cumulative.iter().enumerate() {
            le.clear();
            match bounds.get(i) {
                Some(&bound) => push_float(&mut le, bound),
                None => le.push_str("+Inf"),
            }
            self.out.push_str(name);
            self.out.push_str("_bucket");
            self.labels(labels, Some(&le));
            let _ = writeln!(self.out, " {count}");
        }
        self.out.push_str(name);
        self.out.push_str("_count");
        self.labels(labels, None);
        let _ = writeln!(self.out, " {}", cumulative.last().copied().unwrap_or(0));
        self.out.push_str(name);
        self.out.push_str("_sum");
        self.labels(labels, None);
        self.out.push(' ');
        self.float(sum);
        self.out.push('\n');
    }

    /// The scrape's text, ended as its form wants.
    pub fn finish(mut self) -> String {
        if self.format == Format::OpenMetrics {
            self.out.push_str("# EOF\n");
        }
        self.out
    }

    fn labels(&mut self, labels: &[(&str, &str)], le: Option<&str>) {
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.out.push('{');
        let le = le.map(|v| ("le", v));
        for (i, (key, value)) in labels.iter().copied().chain(le).enumerate() {
            debug_assert!(valid_name(key), "{key}");
            if i > 0 {
                self.out.push(',');
            }
            self.out.push_str(key);
            self.out.push_str("=\"");
            for c in value.chars() {
                match c {
                    '\\' => self.out.push_str("\\\\"),
                    '"' => self.out.push_str("\\\""),
                    '\n' => self.out.push_str("\\n"),
                    c => self.out.push(c),
                }
            }
            self.out.push('"');
        }
        self.out.push('}');
    }

    fn float(&mut self, v: f64) {
        push_float(&mut self.out, v);
    }
}

/// `v` as both forms read a float: Rust's shortest round-trip form, which keeps a decimal
/// point or an exponent (`1.0`, not `1`: OpenMetrics's canonical `le`), and the spellings of
/// the infinities and NaN they share.
fn push_float(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{v:?}");
    }
}

/// A metric or label name both forms take: `[a-zA-Z_][a-zA-Z0-9_]*` (no colons: those are
/// for recording rules).
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_and_plain_clients_get_what_they_ask_for() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        // Prometheus 3's, protobuf first (cb writes no protobuf: the next best is taken).
        let prometheus3 = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.6,application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1";
        for (accept, want) in [
            (None, Format::Text),
            (Some(prometheus), Format::OpenMetrics),
            (Some(prometheus3), Format::OpenMetrics),
            (Some("application/openmetrics-text"), Format::OpenMetrics),
            (
                Some("Application/OpenMetrics-Text; Version=\"1.0.0\""),
                Format::OpenMetrics,
            ),
            (Some("*/*"), Format::Text),
            (Some("text/plain"), Format::Text),
            (Some("text/plain;version=0.0.4"), Format::Text),
            (Some("application/json"), Format::Text),
            (Some(""), Format::Text),
            (Some(";;,,=;q"), Format::Text),
            // Only a version cb does not write: the default.
            (
                Some("application/openmetrics-text;version=2.0.0"),
                Format::Text,
            ),
            // Refused, or weighed below text.
            (Some("application/openmetrics-text;q=0"), Format::Text),
            (
                Some("application/openmetrics-text;q=0.2,text/plain;q=0.9"),
                Format::Text,
            ),
            (
                Some("application/openmetrics-text;q=nonsense"),
                Format::Text,
            ),
            (Some("application/openmetrics-text;q=2"), Format::Text),
            // An equal weight: the client named OpenMetrics, so it reads it.
            (
                Some("text/plain, application/openmetrics-text"),
                Format::OpenMetrics,
            ),
        ] {
            assert_eq!(Format::negotiate(accept), want, "{accept:?}");
        }
    }

    fn sample(format: Format) -> String {
        let mut e = Exposition::new(format);
        e.family(
            "cb_changes",
            Kind::Counter,
            None,
            "Changes \"folded\" \\ here.",
        );
        e.counter("cb_changes", &[], 3);
        e.family("cb_log_bytes", Kind::Gauge, Some("bytes"), "Bytes.");
        e.gauge("cb_log_bytes", &[], 42);
        e.family("cb_lag_seconds", Kind::Gauge, Some("seconds"), "Lag.");
        e.gauge_f64("cb_lag_seconds", &[("state", "a\"b\\c\nd")], 0.25);
        e.family(
            "cb_latency_seconds",
            Kind::Histogram,
            Some("seconds"),
            "Latency.",
        );
        e.histogram(
            "cb_latency_seconds",
            &[("route", "/v1/changes")],
            &[0.005, 1.0],
            &[1, 2, 3],
            2.5,
        );
        e.finish()
    }

    #[test]
    fn text_names_a_counter_family_with_its_total_and_has_no_eof() {
        expect_test::expect![[r#"
            # HELP cb_changes_total Changes "folded" \\ here.
            # TYPE cb_changes_total counter
            cb_changes_total 3
            # HELP cb_log_bytes Bytes.
            # TYPE cb_log_bytes gauge
            cb_log_bytes 42
            # HELP cb_lag_seconds Lag.
            # TYPE cb_lag_seconds gauge
            cb_lag_seconds{state="a\"b\\c\nd"} 0.25
            # HELP cb_latency_seconds Latency.
            # TYPE cb_latency_seconds histogram
            cb_latency_seconds_bucket{route="/v1/changes",le="0.005"} 1
            cb_latency_seconds_bucket{route="/v1/changes",le="1.0"} 2
            cb_latency_seconds_bucket{route="/v1/changes",le="+Inf"} 3
            cb_latency_seconds_count{route="/v1/changes"} 3
            cb_latency_seconds_sum{route="/v1/changes"} 2.5
        "#]]
        .assert_eq(&sample(Format::Text));
    }

    #[test]
    fn openmetrics_names_a_counter_family_without_and_ends_with_eof() {
        expect_test::expect![[r#"
            # HELP cb_changes Changes \"folded\" \\ here.
            # TYPE cb_changes counter
            cb_changes_total 3
            # HELP cb_log_bytes Bytes.
            # TYPE cb_log_bytes gauge
            # UNIT cb_log_bytes bytes
            cb_log_bytes 42
            # HELP cb_lag_seconds Lag.
            # TYPE cb_lag_seconds gauge
            # UNIT cb_lag_seconds seconds
            cb_lag_seconds{state="a\"b\\c\nd"} 0.25
            # HELP cb_latency_seconds Latency.
            # TYPE cb_latency_seconds histogram
            # UNIT cb_latency_seconds seconds
            cb_latency_seconds_bucket{route="/v1/changes",le="0.005"} 1
            cb_latency_seconds_bucket{route="/v1/changes",le="1.0"} 2
            cb_latency_seconds_bucket{route="/v1/changes",le="+Inf"} 3
            cb_latency_seconds_count{route="/v1/changes"} 3
            cb_latency_seconds_sum{route="/v1/changes"} 2.5
            # EOF
        "#]]
        .assert_eq(&sample(Format::OpenMetrics));
    }

    #[test]
    fn floats_keep_a_point_or_an_exponent() {
        let mut s = String::new();
        for v in [
            1.0,
            0.0005,
            86400.0,
            1e-7,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
        ] {
            push_float(&mut s, v);
            s.push(' ');
        }
        assert_eq!(s, "1.0 0.0005 86400.0 1e-7 +Inf -Inf NaN ");
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("cb_changes"));
        assert!(valid_name("_x1"));
        assert!(!valid_name(""));
        assert!(!valid_name("1x"));
        assert!(!valid_name("cb:x"));
        assert!(!valid_name("cb-x"));
    }
}
