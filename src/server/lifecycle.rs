//! Bucket lifecycle rules: the `<LifecycleConfiguration>` XML in (validated as OSS validates it) and out,
//! the stored form (JSON in the bucket row), and when a rule applies.
//!
//! Supported, because a backup needs them: `Expiration` (`Days`, `CreatedBeforeDate`, the older `Date`,
//! `ExpiredObjectDeleteMarker`), `AbortMultipartUpload` (`Days`, `CreatedBeforeDate`),
//! `NoncurrentVersionExpiration` (`NoncurrentDays`), and the filters `Prefix`, `Tag`, and `Filter`
//! (`ObjectSizeGreaterThan`, `ObjectSizeLessThan`, `Not`). Storage-class transitions are refused with
//! 501 NotImplemented: this server has one storage class in practice and no RestoreObject.
//!
//! Timing, as OSS documents it: a time is rounded up to the next midnight UTC, then the rule's days are
//! added; the action is due once the clock passes that instant ([DOC: "the reason why objects in a bucket
//! are not deleted…", help.aliyun.com]). `serve` runs the pass hourly and on demand through the control
//! API, on a lifecycle clock that tests move forward without touching the request clock (signatures keep
//! working).
//!
//! Validation, with the EC of each OSS error page: more than 1,000 rules (0014-00000014); `Days` together
//! with `CreatedBeforeDate` (0014-00000061); two rules with the same prefix (0014-00000085); overlapping
//! prefixes for the same action (0014-00000084; allowed with `x-oss-allow-same-action-overlap: true`, the
//! header alibabacloud-oss-v2 sends for that). The pages give ECs, not codes: the code is `InvalidArgument`,
//! the one OSS uses for semantically invalid input, and `MalformedXML` for a document that does not fit
//! the schema. Rules told apart by tags do not conflict (our reading: the docs' examples carry no tags).

use serde::{Deserialize, Serialize};

use super::error::OssError;
use super::xml::{self, Element, XmlWriter};
use crate::timefmt;

pub const MAX_RULES: usize = 1000;
const MAX_ID_LEN: usize = 255;
const DAY: i64 = 86_400;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Configuration {
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub id: String,
    pub prefix: String,
    pub enabled: bool,
    #[serde(default)]
    pub tags: Vec<(String, String)>,
    #[serde(default)]
    pub filter: Filter,
    pub expiration: Option<Expiration>,
    pub abort_multipart_upload: Option<AgeLimit>,
    pub noncurrent_days: Option<u32>,
}

/// `<Filter>`: further conditions on the objects a rule applies to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    pub size_greater_than: Option<u64>,
    pub size_less_than: Option<u64>,
    /// Objects matching one of these are excluded.
    pub not: Vec<NotFilter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotFilter {
    pub prefix: String,
    pub tag: Option<(String, String)>,
}

/// When current versions expire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expiration {
    /// Days after the last modification.
    Days(u32),
    /// Objects last modified before this instant (Unix seconds, a midnight UTC).
    CreatedBeforeDate(i64),
    /// oss2's older `Date`: every matching object expires once this instant has passed.
    Date(i64),
    /// Remove a delete marker that is the only version left of its key.
    ExpiredObjectDeleteMarker(bool),
}

/// When incomplete multipart uploads are aborted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgeLimit {
    Days(u32),
    CreatedBeforeDate(i64),
}

/// The instant an action that is `days` after `base` becomes due: `base` rounded up to midnight UTC, plus
/// the days.
pub fn due(base: i64, days: u32) -> i64 {
    let midnight = base.div_euclid(DAY) * DAY;
    let rounded = if midnight == base { base } else { midnight + DAY };
    rounded + i64::from(days) * DAY
}

impl Rule {
    /// Whether the rule's filters select an object with this key, tags and size.
    pub fn selects(&self, key: &str, tags: &[(String, String)], size: Option<u64>) -> bool {
        if !self.enabled || !key.starts_with(&self.prefix) {
            return false;
        }
        if !self.tags.iter().all(|t| tags.contains(t)) {
            return false;
        }
        if let Some(size) = size {
            if self.filter.size_greater_than.is_some_and(|min| size <= min) {
                return false;
            }
            if self.filter.size_less_than.is_some_and(|max| size >= max) {
                return false;
            }
        }
        let excluded = self
            .filter
            .not
            .iter()
            .any(|n| key.starts_with(&n.prefix) && n.tag.as_ref().is_none_or(|t| tags.contains(t)));
        !excluded
    }

    /// Whether a current version last modified at `mtime` has expired at `now`.
    pub fn current_expired(&self, mtime: i64, now: i64) -> bool {
        match self.expiration {
            Some(Expiration::Days(d)) => now >= due(mtime, d),
            Some(Expiration::CreatedBeforeDate(date)) => mtime < date,
            Some(Expiration::Date(date)) => now >= date,
            Some(Expiration::ExpiredObjectDeleteMarker(_)) | None => false,
        }
    }

    pub fn removes_expired_delete_markers(&self) -> bool {
        matches!(self.expiration, Some(Expiration::ExpiredObjectDeleteMarker(true)))
    }

    /// Whether a version noncurrent since `since` has expired at `now`.
    pub fn noncurrent_expired(&self, since: i64, now: i64) -> bool {
        self.noncurrent_days.is_some_and(|d| now >= due(since, d))
    }

    /// Whether an upload initiated at `initiated` is to be aborted at `now`.
    pub fn upload_expired(&self, initiated: i64, now: i64) -> bool {
        match self.abort_multipart_upload {
            Some(AgeLimit::Days(d)) => now >= due(initiated, d),
            Some(AgeLimit::CreatedBeforeDate(date)) => initiated < date,
            None => false,
        }
    }

    /// The action types of this rule, for the overlap check.
    fn actions(&self) -> impl Iterator<Item = &'static str> + '_ {
        let expiration = self.expiration.is_some().then_some("Expiration");
        let noncurrent = self.noncurrent_days.is_some().then_some("NoncurrentVersionExpiration");
        let abort = self.abort_multipart_upload.is_some().then_some("AbortMultipartUpload");
        [expiration, noncurrent, abort].into_iter().flatten()
    }
}

fn invalid(ec: &'static str, message: impl Into<String>) -> OssError {
    OssError::invalid_argument(message).with_ec(ec)
}

fn malformed(reason: impl Into<String>) -> OssError {
    OssError::malformed_xml().with("Reason", reason.into())
}

fn days(el: &Element, what: &str) -> Result<u32, OssError> {
    let text = el.text.trim();
    text.parse::<u32>().ok().filter(|d| *d > 0).ok_or_else(|| {
        OssError::invalid_argument(format!("{what} must be a positive integer, not {text:?}."))
            .with("ArgumentName", what.to_string())
            .with("ArgumentValue", text.to_string())
    })
}

/// A lifecycle date: ISO 8601 at midnight UTC (`2024-01-01T00:00:00.000Z`).
fn date(el: &Element, what: &str) -> Result<i64, OssError> {
    let text = el.text.trim();
    let secs = timefmt::parse_xml_date(text).map(timefmt::unix_secs).ok_or_else(|| {
        OssError::invalid_argument(format!("{what} must be an ISO 8601 date such as 2024-01-01T00:00:00.000Z."))
            .with("ArgumentName", what.to_string())
            .with("ArgumentValue", text.to_string())
    })?;
    if secs.rem_euclid(DAY) != 0 {
        return Err(OssError::invalid_argument(format!("{what} must be at midnight UTC (T00:00:00.000Z)."))
            .with("ArgumentName", what.to_string())
            .with("ArgumentValue", text.to_string()));
    }
    Ok(secs)
}

fn tag(el: &Element) -> Result<(String, String), OssError> {
    let key = el.child_text("Key").ok_or_else(|| malformed("a Tag needs a Key"))?;
    let value = el.child_text("Value").unwrap_or("");
    Ok((key.to_string(), value.to_string()))
}

fn parse_rule(el: &Element, index: usize) -> Result<Rule, OssError> {
    const KNOWN: &[&str] = &[
        "ID",
        "Prefix",
        "Status",
        "Expiration",
        "Transition",
        "AbortMultipartUpload",
        "Tag",
        "NoncurrentVersionExpiration",
        "NoncurrentVersionTransition",
        "Filter",
        "AtimeBase",
    ];
    if let Some(other) = el.children.iter().find(|c| !KNOWN.contains(&c.name.as_str())) {
        return Err(malformed(format!("unknown element {} in Rule", other.name)));
    }
    for unsupported in ["Transition", "NoncurrentVersionTransition"] {
        if el.child(unsupported).is_some() {
            return Err(OssError::not_implemented(&format!(
                "The lifecycle action {unsupported} (storage class transitions)"
            )));
        }
    }
    let id = el.child_text("ID").map(str::trim).unwrap_or("").to_string();
    if id.len() > MAX_ID_LEN {
        return Err(invalid("0014-00000011", format!("A rule ID can be at most {MAX_ID_LEN} characters.")));
    }
    let id = if id.is_empty() { format!("rule-{}", index + 1) } else { id };
    let enabled = match el.child_text("Status").map(str::trim) {
        Some("Enabled") => true,
        Some("Disabled") => false,
        Some(other) => {
            return Err(OssError::invalid_argument("Status must be Enabled or Disabled.")
                .with("ArgumentName", "Status")
                .with("ArgumentValue", other.to_string()));
        }
        None => return Err(malformed("a Rule needs a Status")),
    };
    let prefix = el.child_text("Prefix").unwrap_or("").to_string();
    let tags = el.children_named("Tag").map(tag).collect::<Result<Vec<_>, _>>()?;

    let expiration = match el.child("Expiration") {
        None => None,
        Some(e) => {
            let (d, c, old, m) =
                (e.child("Days"), e.child("CreatedBeforeDate"), e.child("Date"), e.child("ExpiredObjectDeleteMarker"));
            if d.is_some() && (c.is_some() || old.is_some()) {
                return Err(invalid(
                    "0014-00000061",
                    "Days and CreatedBeforeDate cannot both be specified in Expiration.",
                ));
            }
            if m.is_some() && (d.is_some() || c.is_some() || old.is_some()) {
                return Err(invalid(
                    "0014-00000061",
                    "ExpiredObjectDeleteMarker cannot be specified with Days or CreatedBeforeDate in Expiration.",
                ));
            }
            Some(match (d, c, old, m) {
                (Some(d), _, _, _) => Expiration::Days(days(d, "Expiration Days")?),
                (_, Some(c), _, _) => Expiration::CreatedBeforeDate(date(c, "CreatedBeforeDate")?),
                (_, _, Some(o), _) => Expiration::Date(date(o, "Date")?),
                (_, _, _, Some(m)) => match m.text.trim() {
                    t if t.eq_ignore_ascii_case("true") => Expiration::ExpiredObjectDeleteMarker(true),
                    t if t.eq_ignore_ascii_case("false") => Expiration::ExpiredObjectDeleteMarker(false),
                    t => {
                        return Err(OssError::invalid_argument("ExpiredObjectDeleteMarker must be true or false.")
                            .with("ArgumentName", "ExpiredObjectDeleteMarker")
                            .with("ArgumentValue", t.to_string()));
                    }
                },
                _ => return Err(malformed("Expiration needs Days, CreatedBeforeDate or ExpiredObjectDeleteMarker")),
            })
        }
    };
    let abort_multipart_upload = match el.child("AbortMultipartUpload") {
        None => None,
        Some(a) => match (a.child("Days"), a.child("CreatedBeforeDate")) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "0014-00000061",
                    "Days and CreatedBeforeDate cannot both be specified in AbortMultipartUpload.",
                ));
            }
            (Some(d), None) => Some(AgeLimit::Days(days(d, "AbortMultipartUpload Days")?)),
            (None, Some(c)) => Some(AgeLimit::CreatedBeforeDate(date(c, "CreatedBeforeDate")?)),
            (None, None) => return Err(malformed("AbortMultipartUpload needs Days or CreatedBeforeDate")),
        },
    };
    if abort_multipart_upload.is_some() && !tags.is_empty() {
        return Err(OssError::invalid_argument("A rule with tags cannot include AbortMultipartUpload."));
    }
    let noncurrent_days = match el.child("NoncurrentVersionExpiration") {
        None => None,
        Some(n) => match n.child("NoncurrentDays") {
            Some(d) => Some(days(d, "NoncurrentDays")?),
            None => return Err(malformed("NoncurrentVersionExpiration needs NoncurrentDays")),
        },
    };
    let mut filter = Filter::default();
    if let Some(f) = el.child("Filter") {
        let size = |name: &str| -> Result<Option<u64>, OssError> {
            f.child_text(name)
                .map(|t| {
                    t.trim().parse::<u64>().map_err(|_| {
                        OssError::invalid_argument(format!("{name} must be a number of bytes."))
                            .with("ArgumentName", name.to_string())
                            .with("ArgumentValue", t.to_string())
                    })
                })
                .transpose()
        };
        filter.size_greater_than = size("ObjectSizeGreaterThan")?;
        filter.size_less_than = size("ObjectSizeLessThan")?;
        if let (Some(gt), Some(lt)) = (filter.size_greater_than, filter.size_less_than)
            && gt >= lt
        {
            return Err(OssError::invalid_argument("ObjectSizeGreaterThan must be less than ObjectSizeLessThan."));
        }
        for n in f.children_named("Not") {
            let not_prefix = n.child_text("Prefix").unwrap_or("").to_string();
            if !not_prefix.starts_with(&prefix) || not_prefix == prefix && n.child("Tag").is_none() {
                return Err(OssError::invalid_argument(
                    "The Prefix of Not must start with the rule's Prefix and exclude something narrower.",
                ));
            }
            filter.not.push(NotFilter { prefix: not_prefix, tag: n.child("Tag").map(tag).transpose()? });
        }
    }
    let rule = Rule { id, prefix, enabled, tags, filter, expiration, abort_multipart_upload, noncurrent_days };
    if rule.actions().next().is_none() {
        return Err(malformed(format!(
            "rule {} has no action (Expiration, AbortMultipartUpload or NoncurrentVersionExpiration)",
            rule.id
        )));
    }
    Ok(rule)
}

/// Parse and validate a PutBucketLifecycle body.
pub fn parse(body: &[u8], allow_same_action_overlap: bool) -> Result<Configuration, OssError> {
    let root = xml::parse(body).map_err(|e| malformed(e.to_string()))?;
    if root.name != "LifecycleConfiguration" {
        return Err(malformed("the root element must be LifecycleConfiguration"));
    }
    let nodes: Vec<&Element> = root.children_named("Rule").collect();
    if nodes.is_empty() {
        return Err(malformed("a LifecycleConfiguration needs at least one Rule"));
    }
    if nodes.len() > MAX_RULES {
        return Err(invalid(
            "0014-00000014",
            format!("A bucket can have at most {MAX_RULES} lifecycle rules; this configuration has {}.", nodes.len()),
        ));
    }
    let rules = nodes.iter().enumerate().map(|(i, n)| parse_rule(n, i)).collect::<Result<Vec<_>, _>>()?;
    let mut ids = std::collections::HashSet::new();
    for r in &rules {
        if !ids.insert(r.id.as_str()) {
            return Err(OssError::invalid_argument(format!("The rule ID {:?} is used twice.", r.id)));
        }
    }
    for (i, a) in rules.iter().enumerate() {
        for b in &rules[i + 1..] {
            if !a.tags.is_empty() || !b.tags.is_empty() {
                continue;
            }
            if a.prefix == b.prefix {
                return Err(invalid(
                    "0014-00000085",
                    format!("Rules {:?} and {:?} have the same prefix {:?}.", a.id, b.id, a.prefix),
                ));
            }
            let overlap = a.prefix.starts_with(&b.prefix) || b.prefix.starts_with(&a.prefix);
            if overlap
                && !allow_same_action_overlap
                && let Some(action) = a.actions().find(|x| b.actions().any(|y| y == *x))
            {
                return Err(invalid(
                    "0014-00000084",
                    format!(
                        "Rules {:?} and {:?} have overlapping prefixes {:?} and {:?} for the same action {action}.",
                        a.id, b.id, a.prefix, b.prefix
                    ),
                ));
            }
        }
    }
    Ok(Configuration { rules })
}

fn date_text(secs: i64) -> String {
    timefmt::xml_date(timefmt::from_unix_secs(secs))
}

fn write_tag(w: &mut XmlWriter, (k, v): &(String, String)) {
    w.start("Tag").elem("Key", k).elem("Value", v).end();
}

impl Configuration {
    /// GetBucketLifecycle's body.
    pub fn to_xml(&self) -> String {
        let mut w = XmlWriter::new("LifecycleConfiguration");
        for r in &self.rules {
            w.start("Rule")
                .elem("ID", &r.id)
                .elem("Prefix", &r.prefix)
                .elem("Status", if r.enabled { "Enabled" } else { "Disabled" });
            if let Some(e) = r.expiration {
                w.start("Expiration");
                match e {
                    Expiration::Days(d) => w.elem("Days", &d.to_string()),
                    Expiration::CreatedBeforeDate(t) => w.elem("CreatedBeforeDate", &date_text(t)),
                    Expiration::Date(t) => w.elem("Date", &date_text(t)),
                    Expiration::ExpiredObjectDeleteMarker(m) => {
                        w.elem("ExpiredObjectDeleteMarker", if m { "true" } else { "false" })
                    }
                };
                w.end();
            }
            if let Some(a) = r.abort_multipart_upload {
                w.start("AbortMultipartUpload");
                match a {
                    AgeLimit::Days(d) => w.elem("Days", &d.to_string()),
                    AgeLimit::CreatedBeforeDate(t) => w.elem("CreatedBeforeDate", &date_text(t)),
                };
                w.end();
            }
            for t in &r.tags {
                write_tag(&mut w, t);
            }
            if let Some(d) = r.noncurrent_days {
                w.start("NoncurrentVersionExpiration").elem("NoncurrentDays", &d.to_string()).end();
            }
            let f = &r.filter;
            if f.size_greater_than.is_some() || f.size_less_than.is_some() || !f.not.is_empty() {
                w.start("Filter");
                for n in &f.not {
                    w.start("Not").elem("Prefix", &n.prefix);
                    if let Some(t) = &n.tag {
                        write_tag(&mut w, t);
                    }
                    w.end();
                }
                if let Some(s) = f.size_greater_than {
                    w.elem("ObjectSizeGreaterThan", &s.to_string());
                }
                if let Some(s) = f.size_less_than {
                    w.elem("ObjectSizeLessThan", &s.to_string());
                }
                w.end();
            }
            w.end();
        }
        w.finish()
    }

    /// The stored form.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(s: &str) -> Result<Configuration, serde_json::Error> {
        serde_json::from_str(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(rules: &str) -> Vec<u8> {
        format!("<LifecycleConfiguration>{rules}</LifecycleConfiguration>").into_bytes()
    }

    fn rule(id: &str, prefix: &str, action: &str) -> String {
        format!("<Rule><ID>{id}</ID><Prefix>{prefix}</Prefix><Status>Enabled</Status>{action}</Rule>")
    }

    const EXPIRE_30: &str = "<Expiration><Days>30</Days></Expiration>";
    const ABORT_7: &str = "<AbortMultipartUpload><Days>7</Days></AbortMultipartUpload>";

    #[test]
    fn due_rounds_up_to_midnight_utc() {
        // OSS's example: modified 2022-10-27 23:00 UTC+8 (15:00 UTC) is rounded up to 2022-10-28 00:00 UTC,
        // then the days are added. (The doc then names 2022-11-28 for 30 days, one day past its own
        // arithmetic: 30 days after 10-28 is 11-27.)
        let modified = timefmt::unix_secs(timefmt::parse_xml_date("2022-10-27T15:00:00.000Z").unwrap());
        let expected = timefmt::unix_secs(timefmt::parse_xml_date("2022-11-27T00:00:00.000Z").unwrap());
        assert_eq!(due(modified, 30), expected);
        assert_eq!(due(expected, 1), expected + DAY, "an exact midnight is not rounded");
    }

    #[test]
    fn round_trip_and_selection() {
        let body = doc(&format!(
            "{}{}<Rule><ID>t</ID><Prefix>tmp/</Prefix><Status>Disabled</Status>\
             <Expiration><CreatedBeforeDate>2024-01-01T00:00:00.000Z</CreatedBeforeDate></Expiration>\
             <Tag><Key>k</Key><Value>v</Value></Tag>\
             <NoncurrentVersionExpiration><NoncurrentDays>3</NoncurrentDays></NoncurrentVersionExpiration>\
             <Filter><Not><Prefix>tmp/keep/</Prefix></Not><ObjectSizeGreaterThan>10</ObjectSizeGreaterThan></Filter>\
             </Rule>",
            rule("a", "logs/", EXPIRE_30),
            rule("b", "", ABORT_7),
        ));
        let config = parse(&body, false).unwrap();
        assert_eq!(config.rules.len(), 3);
        let again = parse(config.to_xml().as_bytes(), false).unwrap();
        assert_eq!(again, config, "GetBucketLifecycle gives back what was put");
        let back = Configuration::from_json(&config.to_json()).unwrap();
        assert_eq!(back, config);
        let t = &config.rules[2];
        let tags = vec![("k".to_string(), "v".to_string())];
        let mut enabled = t.clone();
        enabled.enabled = true;
        assert!(!t.selects("tmp/x", &tags, Some(100)), "disabled");
        assert!(enabled.selects("tmp/x", &tags, Some(100)));
        assert!(!enabled.selects("tmp/x", &[], Some(100)), "tag missing");
        assert!(!enabled.selects("tmp/keep/x", &tags, Some(100)), "excluded by Not");
        assert!(!enabled.selects("tmp/x", &tags, Some(10)), "too small");
        assert!(!enabled.selects("logs/x", &tags, Some(100)), "other prefix");
    }

    #[test]
    fn invalid_configurations_get_the_errors_oss_gives() {
        let cases: Vec<(Vec<u8>, &str, &str)> = vec![
            (doc(""), "MalformedXML", "0000-00000000"),
            (b"<Other/>".to_vec(), "MalformedXML", "0000-00000000"),
            (doc(&rule("a", "x", "")), "MalformedXML", "0000-00000000"),
            (
                doc(&rule(
                    "a",
                    "x",
                    "<Expiration><Days>1</Days><CreatedBeforeDate>2024-01-01T00:00:00.000Z</CreatedBeforeDate></Expiration>",
                )),
                "InvalidArgument",
                "0014-00000061",
            ),
            (
                doc(&format!("{}{}", rule("a", "x", EXPIRE_30), rule("b", "x", ABORT_7))),
                "InvalidArgument",
                "0014-00000085",
            ),
            (
                doc(&format!("{}{}", rule("a", "x", EXPIRE_30), rule("b", "x/y", EXPIRE_30))),
                "InvalidArgument",
                "0014-00000084",
            ),
            (doc(&rule("a", "x", "<Expiration><Days>0</Days></Expiration>")), "InvalidArgument", "0000-00000000"),
            (
                doc(&rule(
                    "a",
                    "x",
                    "<Expiration><CreatedBeforeDate>2024-01-01T10:00:00.000Z</CreatedBeforeDate></Expiration>",
                )),
                "InvalidArgument",
                "0000-00000000",
            ),
            (
                doc(&rule("a", "x", "<Transition><Days>3</Days><StorageClass>IA</StorageClass></Transition>")),
                "NotImplemented",
                "0000-00000000",
            ),
            (
                doc(&format!("{}{}", rule("a", "x", EXPIRE_30), rule("a", "y", EXPIRE_30))),
                "InvalidArgument",
                "0000-00000000",
            ),
        ];
        for (body, code, ec) in cases {
            let e = parse(&body, false).unwrap_err();
            assert_eq!((e.code.as_str(), e.ec), (code, ec), "{}", String::from_utf8_lossy(&body));
        }
        let many: String = (0..=MAX_RULES).map(|i| rule(&format!("r{i}"), &format!("p{i:04}/"), EXPIRE_30)).collect();
        assert_eq!(parse(&doc(&many), false).unwrap_err().ec, "0014-00000014");
        let exactly: String = (0..MAX_RULES).map(|i| rule(&format!("r{i}"), &format!("p{i:04}/"), EXPIRE_30)).collect();
        assert_eq!(parse(&doc(&exactly), false).unwrap().rules.len(), MAX_RULES);
        // The overlap is allowed when the client asks for it.
        let overlap = doc(&format!("{}{}", rule("a", "x", EXPIRE_30), rule("b", "x/y", EXPIRE_30)));
        assert!(parse(&overlap, true).is_ok());
    }
}
