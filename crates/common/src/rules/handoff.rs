//! When a slave hands the rest of its batch to a new invocation, and when handing on
//! stops: a batch whose invocations make no progress fails what is left, with a reason.

/// Invocations in a row that may hand a batch on without finishing a file or copying a
/// part; the files still left after that cannot be copied within one invocation.
pub const STALLED_HANDOFFS: u32 = 3;

/// How many invocations in a row, this one included, will have handed the batch on
/// without progress (a file's state changed, or parts copied); 0 when this one made
/// progress or leaves nothing to hand on.
pub fn handoff_stalls(progressed: bool, files_left: bool, handed_on: Option<u32>) -> u32 {
    if !files_left || progressed {
        0
    } else {
        handed_on.unwrap_or(0) + 1
    }
}

/// Whether the files left after this many stalled invocations fail instead of being
/// handed on once more.
pub fn stalled_for_good(stalls: u32) -> bool {
    stalls > STALLED_HANDOFFS
}

/// Why a file left unfinished by invocations in a row that made no progress failed.
/// `unchecked` says why its destination could not be checked, when its source is gone.
pub fn stalled_reason(stalls: u32, unchecked: Option<&str>) -> String {
    match unchecked {
        None => format!(
            "the copy did not finish within {stalls} invocations of the slave in a row; copy \
             it in parts (a lower MULTIPART_THRESHOLD_BYTES) or give the slave a longer \
             timeout; the source was left in place"
        ),
        Some(why) => format!(
            "the source is gone, but {stalls} invocations of the slave in a row could not \
             check that the destination holds the listed object; check the destination \
             ({why})"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_handed_on_until_invocations_in_a_row_make_no_progress() {
        assert_eq!(handoff_stalls(false, false, Some(2)), 0, "nothing left");
        assert_eq!(handoff_stalls(true, true, Some(2)), 0, "progress");
        assert_eq!(handoff_stalls(false, true, None), 1);
        assert_eq!(handoff_stalls(false, true, Some(2)), 3);
        assert!(!stalled_for_good(STALLED_HANDOFFS));
        assert!(stalled_for_good(handoff_stalls(
            false,
            true,
            Some(STALLED_HANDOFFS)
        )));
    }

    #[test]
    fn a_stalled_file_is_said_to_be_left_in_place_only_while_its_source_is() {
        let kept = stalled_reason(4, None);
        assert!(kept.contains("4 invocations"), "{kept}");
        assert!(kept.contains("the source was left in place"), "{kept}");
        let gone = stalled_reason(4, Some("HeadObject: SlowDown"));
        assert!(gone.starts_with("the source is gone"), "{gone}");
        assert!(gone.contains("HeadObject: SlowDown"), "{gone}");
        assert!(!gone.contains("left in place"), "{gone}");
    }
}
