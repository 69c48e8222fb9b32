//! Which listed objects a run takes beyond its prefix and suffixes: glob patterns on
//! the key relative to the source prefix (an exclude always wins), size limits and
//! modification-time limits.

use serde::{Deserialize, Serialize};

/// A glob pattern on a key relative to the run's source prefix: `*` matches any run of
/// characters within one path segment, `**` any number of whole segments (`**/` also
/// none), `?` one character other than `/`, and `\` makes the next character literal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Glob(String);

/// One piece of a parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(char),
    /// `?`
    AnyChar,
    /// `*`
    AnyInSegment,
    /// `**/` or a whole trailing `**`: any number of whole segments.
    AnySegments,
}

impl Glob {
    pub fn new(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("an empty pattern matches nothing; leave the list out instead".into());
        }
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' if chars.next().is_none() => {
                    return Err(format!(
                        "pattern {pattern:?} ends with a lone \\, which escapes nothing"
                    ));
                }
                '\\' => {}
                '[' | ']' | '{' | '}' => {
                    return Err(format!(
                        "pattern {pattern:?}: {c:?} is not supported (only *, ** and ? are; \
                         write \\{c} for the character itself)"
                    ));
                }
                _ => {}
            }
        }
        Ok(Glob(pattern.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn pieces(&self) -> Vec<Piece> {
        let chars: Vec<char> = self.0.chars().collect();
        let mut pieces = Vec::with_capacity(chars.len());
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '\\' if i + 1 < chars.len() => {
                    pieces.push(Piece::Literal(chars[i + 1]));
                    i += 2;
                    continue;
                }
                '*' if chars.get(i + 1) == Some(&'*') => {
                    let starts_segment = i == 0 || chars[i - 1] == '/';
                    let ends_segment = matches!(chars.get(i + 2), None | Some('/'));
                    if starts_segment && ends_segment {
                        pieces.push(Piece::AnySegments);
                        // `**/` is one piece: the slash belongs to the segments it stands for.
                        i += if chars.get(i + 2) == Some(&'/') { 3 } else { 2 };
                        continue;
                    }
                    // `a**b` is two stars within a segment.
                    pieces.push(Piece::AnyInSegment);
                    i += 2;
                    continue;
                }
                '*' => pieces.push(Piece::AnyInSegment),
                '?' => pieces.push(Piece::AnyChar),
                c => pieces.push(Piece::Literal(c)),
            }
            i += 1;
        }
        pieces
    }

    /// Whether `key` (relative to the source prefix) matches the whole pattern.
    pub fn matches(&self, key: &str) -> bool {
        let pieces = self.pieces();
        let key: Vec<char> = key.chars().collect();
        // matched[j]: whether the pieces so far match key[..j]; one pass per piece keeps
        // the cost at pieces × key length, whatever the pattern.
        let mut matched = vec![false; key.len() + 1];
        matched[0] = true;
        for piece in &pieces {
            let mut next = vec![false; key.len() + 1];
            match piece {
                Piece::Literal(c) => {
                    for j in 0..key.len() {
                        next[j + 1] = matched[j] && key[j] == *c;
                    }
                }
                Piece::AnyChar => {
                    for j in 0..key.len() {
                        next[j + 1] = matched[j] && key[j] != '/';
                    }
                }
                Piece::AnyInSegment => {
                    for j in 0..=key.len() {
                        next[j] = matched[j] || (j > 0 && next[j - 1] && key[j - 1] != '/');
                    }
                }
                Piece::AnySegments => {
                    // Nothing, or a run of whole segments (ending on a '/'); at the end of
                    // the pattern, everything that is left.
                    let last = std::ptr::eq(piece, pieces.last().expect("not empty"));
                    let mut reached_before = false;
                    for j in 0..=key.len() {
                        next[j] = matched[j] || (reached_before && (last || key[j - 1] == '/'));
                        reached_before |= matched[j];
                    }
                }
            }
            matched = next;
        }
        matched[key.len()]
    }
}

impl TryFrom<String> for Glob {
    type Error = String;
    fn try_from(raw: String) -> Result<Self, String> {
        Glob::new(&raw)
    }
}

impl From<Glob> for String {
    fn from(g: Glob) -> Self {
        g.0
    }
}

/// A moment, in milliseconds since the Unix epoch, read from RFC 3339.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Reads `2026-11-28T10:00:00Z`, with optional fractions of a second and a `Z` or
    /// `±hh:mm` offset, as RFC 3339 writes a time.
    pub fn parse_rfc3339(raw: &str) -> Result<Self, String> {
        let bad = || format!("{raw:?} is not an RFC 3339 time such as 2026-11-28T10:00:00Z");
        let b = raw.as_bytes();
        if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
            return Err(bad());
        }
        if b[13] != b':' || b[16] != b':' {
            return Err(bad());
        }
        let number = |from: usize, to: usize| -> Result<i64, String> {
            raw.get(from..to)
                .filter(|s| s.bytes().all(|c| c.is_ascii_digit()))
                .and_then(|s| s.parse().ok())
                .ok_or_else(bad)
        };
        let (year, month, day) = (number(0, 4)?, number(5, 7)?, number(8, 10)?);
        let (hour, minute, second) = (number(11, 13)?, number(14, 16)?, number(17, 19)?);
        let mut rest = &raw[19..];
        let mut millis = 0;
        if let Some(fraction) = rest.strip_prefix('.') {
            let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(bad());
            }
            let padded = format!("{:0<3}", &fraction[..digits.min(3)]);
            millis = padded.parse::<i64>().map_err(|_| bad())?;
            rest = &fraction[digits..];
        }
        let offset_minutes = match rest {
            "Z" | "z" => 0,
            _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
                let sign = match rest.as_bytes()[0] {
                    b'+' => 1,
                    b'-' => -1,
                    _ => return Err(bad()),
                };
                let two_digits = |s: &str| {
                    s.bytes()
                        .all(|c| c.is_ascii_digit())
                        .then(|| s.parse::<i64>().ok())
                        .flatten()
                        .ok_or_else(bad)
                };
                let (hours, minutes) = (two_digits(&rest[1..3])?, two_digits(&rest[4..6])?);
                if hours > 23 || minutes > 59 {
                    return Err(bad());
                }
                sign * (hours * 60 + minutes)
            }
            _ => return Err(bad()),
        };
        let days_in_month = match month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
            2 => 28,
            _ => return Err(bad()),
        };
        if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
            return Err(bad());
        }
        let days = days_from_civil(year, month, day);
        let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
        Ok(Timestamp(seconds * 1000 + millis))
    }
}

/// Days from 1970-01-01 to the given date of the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// What a listed object is, as far as selection goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listed<'a> {
    /// The key relative to the run's source prefix.
    pub relative_key: &'a str,
    pub size: u64,
    pub last_modified: Option<Timestamp>,
}

/// The run's selection beyond prefix and suffixes. Every condition given must hold;
/// an object matching any exclude pattern is never taken.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<Glob>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<Glob>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<u64>,
    /// Only objects modified at or after this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified_after: Option<Timestamp>,
    /// Only objects modified before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified_before: Option<Timestamp>,
}

impl Selection {
    /// Checks that the limits leave something to select, naming the fields that do not.
    pub fn check(&self) -> Result<(), String> {
        if let (Some(min), Some(max)) = (self.min_size, self.max_size)
            && min > max
        {
            return Err(format!(
                "min_size: {min} is more than max_size {max}, so nothing could be selected"
            ));
        }
        if let (Some(after), Some(before)) = (self.modified_after, self.modified_before)
            && after >= before
        {
            return Err(
                "modified_after: it is not before modified_before, so nothing could be selected"
                    .into(),
            );
        }
        Ok(())
    }

    pub fn is_everything(&self) -> bool {
        *self == Selection::default()
    }

    /// Whether the patterns take this key (relative to the source prefix): one of
    /// `include`, if any, and none of `exclude`.
    pub fn admits_key(&self, relative_key: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|g| g.matches(relative_key)))
            && !self.exclude.iter().any(|g| g.matches(relative_key))
    }

    /// Whether the run takes this object. An object whose modification time is unknown
    /// is not taken when the run limits modification times.
    pub fn admits(&self, object: Listed<'_>) -> bool {
        let time_known_within =
            |limit: Option<Timestamp>, within: fn(Timestamp, Timestamp) -> bool| {
                limit.is_none_or(|limit| object.last_modified.is_some_and(|t| within(t, limit)))
            };
        self.admits_key(object.relative_key)
            && self.min_size.is_none_or(|min| object.size >= min)
            && self.max_size.is_none_or(|max| object.size <= max)
            && time_known_within(self.modified_after, |t, after| t >= after)
            && time_known_within(self.modified_before, |t, before| t < before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn glob(p: &str) -> Glob {
        Glob::new(p).unwrap()
    }

    #[test]
    fn a_star_stays_within_a_segment_and_two_stars_cross_them() {
        assert!(glob("*.csv").matches("a.csv"));
        assert!(!glob("*.csv").matches("d/a.csv"));
        assert!(
            glob("**/*.csv").matches("a.csv"),
            "**/ also matches no folder"
        );
        assert!(glob("**/*.csv").matches("d/e/a.csv"));
        assert!(!glob("**/*.csv").matches("d/a.csv.bak"));
        assert!(glob("2026-11-*/part-*.parquet").matches("2026-11-28/part-0001.parquet"));
        assert!(!glob("2026-11-*/part-*.parquet").matches("2026-11-28/x/part-1.parquet"));
        assert!(glob("logs/**").matches("logs/a/b.txt"));
        assert!(!glob("logs/**").matches("logsx/a"));
        assert!(glob("a/**/b").matches("a/b"));
        assert!(glob("a/**/b").matches("a/x/y/b"));
        assert!(!glob("a/**/b").matches("a/xb"));
        assert!(glob("part-??.csv").matches("part-07.csv"));
        assert!(!glob("part-??.csv").matches("part-7.csv"));
        assert!(glob("a\\*b").matches("a*b"));
        assert!(!glob("a\\*b").matches("axb"));
        assert!(glob("x**y").matches("xaby") && !glob("x**y").matches("xa/by"));
    }

    #[test]
    fn unsupported_or_empty_patterns_are_refused_by_name() {
        assert!(Glob::new("").is_err());
        let err = Glob::new("data-[0-9].csv").unwrap_err();
        assert!(
            err.contains("'['") && err.contains("not supported"),
            "{err}"
        );
        assert!(Glob::new("{a,b}.csv").is_err());
        assert!(Glob::new("a\\").is_err());
        assert!(
            Glob::new("a\\\\\\").is_err(),
            "three: the last escapes nothing"
        );
        assert!(Glob::new("a\\\\").unwrap().matches("a\\"));
        assert!(
            Glob::new("a\\[b\\]").unwrap().matches("a[b]"),
            "an escaped bracket is literal"
        );
    }

    #[test]
    fn times_are_read_as_rfc_3339_writes_them() {
        let t = |raw| Timestamp::parse_rfc3339(raw);
        assert_eq!(t("1970-01-01T00:00:00Z"), Ok(Timestamp(0)));
        assert_eq!(
            t("2026-11-28T10:00:00.25Z"),
            Ok(Timestamp(1_795_860_000_250))
        );
        assert_eq!(t("2026-11-28T11:00:00+01:00"), t("2026-11-28T10:00:00Z"));
        assert_eq!(t("2024-02-29T00:00:00Z").map(|t| t.0 % 86_400_000), Ok(0));
        for bad in [
            "2026-11-28",
            "2026-02-30T00:00:00Z",
            "2026-11-28T10:00:00",
            "yesterday",
            "2026-11-28T25:00:00Z",
            "2026-11-28T10:00:00+-1:30",
            "2026-11-28T10:00:00+99:99",
        ] {
            assert!(t(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_condition_must_hold_and_an_exclude_always_wins() {
        let selection = Selection {
            include: vec![glob("**/*.csv")],
            exclude: vec![glob("tmp/**")],
            min_size: Some(10),
            max_size: Some(100),
            modified_after: Some(Timestamp(1_000)),
            modified_before: Some(Timestamp(2_000)),
        };
        let object = |key, size, at| Listed {
            relative_key: key,
            size,
            last_modified: Some(Timestamp(at)),
        };
        assert!(selection.admits(object("d/a.csv", 10, 1_000)));
        assert!(
            !selection.admits(object("tmp/a.csv", 10, 1_000)),
            "excluded"
        );
        assert!(
            !selection.admits(object("d/a.json", 10, 1_000)),
            "not included"
        );
        assert!(!selection.admits(object("d/a.csv", 9, 1_000)), "too small");
        assert!(
            !selection.admits(object("d/a.csv", 101, 1_000)),
            "too large"
        );
        assert!(!selection.admits(object("d/a.csv", 10, 999)), "too old");
        assert!(!selection.admits(object("d/a.csv", 10, 2_000)), "too new");
        let unknown = Listed {
            last_modified: None,
            ..object("d/a.csv", 10, 0)
        };
        assert!(!selection.admits(unknown));
        assert!(Selection::default().admits(unknown));
    }

    #[test]
    fn limits_that_leave_nothing_to_select_are_refused() {
        let sizes = Selection {
            min_size: Some(2),
            max_size: Some(1),
            ..Selection::default()
        };
        assert!(sizes.check().unwrap_err().starts_with("min_size"));
        let times = Selection {
            modified_after: Some(Timestamp(5)),
            modified_before: Some(Timestamp(5)),
            ..Selection::default()
        };
        assert!(times.check().unwrap_err().starts_with("modified_after"));
        assert!(Selection::default().check().is_ok());
    }

    /// A straightforward backtracking matcher to hold the one above against.
    fn reference(pattern: &[Piece], key: &[char]) -> bool {
        match pattern.split_first() {
            None => key.is_empty(),
            Some((Piece::Literal(c), rest)) => key.first() == Some(c) && reference(rest, &key[1..]),
            Some((Piece::AnyChar, rest)) => {
                key.first().is_some_and(|c| *c != '/') && reference(rest, &key[1..])
            }
            Some((Piece::AnyInSegment, rest)) => (0..=key.len())
                .take_while(|&n| n == 0 || key[n - 1] != '/')
                .any(|n| reference(rest, &key[n..])),
            Some((Piece::AnySegments, [])) => true,
            Some((Piece::AnySegments, rest)) => (0..=key.len())
                .filter(|&n| n == 0 || key[n - 1] == '/')
                .any(|n| reference(rest, &key[n..])),
        }
    }

    proptest! {
        #[test]
        fn matching_agrees_with_a_backtracking_reference(
            pattern in "[ab/*?]{0,8}", key in "[ab/]{0,8}",
        ) {
            prop_assume!(!pattern.is_empty());
            let g = glob(&pattern);
            let key_chars: Vec<char> = key.chars().collect();
            prop_assert_eq!(g.matches(&key), reference(&g.pieces(), &key_chars), "{} {}", pattern, key);
        }

        #[test]
        fn no_pattern_or_key_makes_matching_panic(pattern in "\\PC{1,12}", key in "\\PC{0,30}") {
            if let Ok(g) = Glob::new(&pattern) {
                let _ = g.matches(&key);
            }
        }

        #[test]
        fn no_text_makes_reading_a_time_panic(raw in "\\PC{0,30}|[0-9T:.Z+-]{18,32}") {
            let _ = Timestamp::parse_rfc3339(&raw);
        }

        #[test]
        fn an_exclude_always_wins(key in "[a-z/]{0,12}", size in 0u64..1000) {
            let selection = Selection {
                include: vec![glob("**")],
                exclude: vec![glob("**")],
                ..Selection::default()
            };
            let object = Listed { relative_key: &key, size, last_modified: None };
            prop_assert!(!selection.admits(object));
        }
    }
}
