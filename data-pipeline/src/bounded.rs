//! Tokenising long texts in bounded memory.
//!
//! A Hugging Face tokenizer keeps per-byte alignments, split pieces and per-token strings
//! while it encodes: about 190 bytes of working memory per input byte, so one 50 MB record
//! took 9.5 GB. Texts longer than [`WINDOW_BYTES`] are therefore encoded window by window,
//! and a token limit stops the walk as soon as it is passed (from the start or the end),
//! so only the part of a text that survives truncation is ever tokenised.
//!
//! Windows overlap by [`MARGIN_BYTES`] on both sides. Tokens that end (or, walking back,
//! start) within the margin of a window's cut are not taken: the next window recomputes
//! them with context on both sides, and it must find a token boundary exactly where the
//! previous window stopped. This gives the whole-text result whenever a cut cannot change
//! tokens more than a margin away, which holds for every pre-tokenised BPE, WordPiece and
//! Unigram model (they split on whitespace and punctuation long before 4 KiB); when the
//! boundary is not found the window and margin grow (up to the whole text), so the result
//! never depends on where a window happened to end.

use std::ops::Range;

use crate::error::Result;
use crate::tokenizer::Tokenizer;

/// Texts up to this many bytes are encoded in one call (the common case).
pub const WINDOW_BYTES: usize = 64 << 10;
/// Context kept on each side of a window's cut.
pub const MARGIN_BYTES: usize = 4 << 10;

/// Which end of a text a token limit keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    Start,
    End,
}

/// Token ids of a text under an optional limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// At most `limit` ids, from the kept end.
    pub ids: Vec<u32>,
    /// The text has more than `limit` tokens.
    pub truncated: bool,
    /// Tokens seen: the exact count when not truncated, a lower bound (> limit) otherwise.
    pub counted: usize,
    /// Largest piece of the text tokenised at once, in bytes (what memory follows).
    pub widest_bytes: usize,
}

/// One window's tokens with absolute byte offsets.
struct Window {
    ids: Vec<u32>,
    offsets: Vec<(usize, usize)>,
}

fn floor_boundary(text: &str, mut i: usize) -> usize {
    i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_boundary(text: &str, mut i: usize) -> usize {
    i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i += 1;
    }
    i
}

fn encode_window(tokenizer: &Tokenizer, text: &str, range: Range<usize>) -> Result<Window> {
    let enc = tokenizer.encode_with_offsets(&text[range.clone()])?;
    let offsets = enc
        .1
        .into_iter()
        .map(|(s, e)| (s + range.start, e + range.start))
        .collect();
    Ok(Window {
        ids: enc.0,
        offsets,
    })
}

/// Encodes `text`, keeping at most `limit` tokens from the `keep` end (all without a limit).
pub fn encode_bounded(
    tokenizer: &Tokenizer,
    text: &str,
    limit: Option<usize>,
    keep: Keep,
) -> Result<Encoded> {
    let (mut ids, widest_bytes) = if text.len() <= WINDOW_BYTES {
        (tokenizer.encode(text)?, text.len())
    } else {
        match keep {
            Keep::Start => walk_forward(tokenizer, text, limit)?,
            Keep::End => walk_backward(tokenizer, text, limit)?,
        }
    };
    let counted = ids.len();
    let truncated = limit.is_some_and(|l| counted > l);
    if let Some(l) = limit.filter(|_| truncated) {
        match keep {
            Keep::Start => ids.truncate(l),
            Keep::End => {
                ids.drain(..counted - l);
            }
        }
    }
    Ok(Encoded {
        ids,
        truncated,
        counted,
        widest_bytes,
    })
}

/// A token with its absolute byte range.
type Tok = (u32, (usize, usize));

/// Where a window continues a walk: the window agrees with the tokens already taken at
/// `pos` (the same token on the taken side, none straddling `pos`).
fn continues(w: &Window, pos: usize, taken_edge: Tok, forward: bool) -> Option<usize> {
    let real = |&(s, e): &(usize, usize)| e > s;
    if w.offsets.iter().any(|&(s, e)| s < pos && e > pos) {
        return None;
    }
    let tokens = || w.ids.iter().copied().zip(w.offsets.iter().copied());
    if forward {
        let before = tokens().rposition(|(_, o)| real(&o) && o.1 <= pos)?;
        let next = tokens().position(|(_, o)| real(&o) && o.0 >= pos)?;
        (tokens().nth(before)? == taken_edge && next > before).then_some(next)
    } else {
        let after = tokens().position(|(_, o)| real(&o) && o.0 >= pos)?;
        let prev = tokens().rposition(|(_, o)| real(&o) && o.1 <= pos)?;
        (tokens().nth(after)? == taken_edge && prev < after).then_some(prev + 1)
    }
}

/// Ids from the start until more than `limit` are known (or the text ends).
fn walk_forward(
    tokenizer: &Tokenizer,
    text: &str,
    limit: Option<usize>,
) -> Result<(Vec<u32>, usize)> {
    let mut ids = Vec::new();
    let mut widest = 0;
    // Bytes `..pos` are tokenised; `edge` is the last token taken.
    let (mut pos, mut edge): (usize, Option<Tok>) = (0, None);
    let (mut window, mut margin) = (WINDOW_BYTES, MARGIN_BYTES);
    while pos < text.len() && limit.is_none_or(|l| ids.len() <= l) {
        let start = floor_boundary(text, pos.saturating_sub(margin));
        let end = ceil_boundary(text, pos + window);
        let last = end == text.len();
        widest = widest.max(end - start);
        let w = encode_window(tokenizer, text, start..end)?;
        let first = match edge {
            None => Some(0),
            Some(edge) => continues(&w, pos, edge, true),
        };
        // Tokens ending near the cut may change with more text: the next window redoes them.
        let keep_until = if last { usize::MAX } else { end - margin };
        let n = first.map_or(0, |f| {
            w.offsets[f..]
                .iter()
                .take_while(|&&(_, e)| e <= keep_until)
                .count()
        });
        match first {
            Some(f) if n > 0 => {
                ids.extend_from_slice(&w.ids[f..f + n]);
                edge = Some((w.ids[f + n - 1], w.offsets[f + n - 1]));
                pos = if last {
                    text.len()
                } else {
                    w.offsets[f + n - 1].1
                };
                (window, margin) = (WINDOW_BYTES, MARGIN_BYTES);
            }
            Some(_) if last => break,
            // The window holds the whole text: it is the answer.
            _ if start == 0 && last => {
                ids = w.ids;
                break;
            }
            // The windows disagree at `pos`, or no token fits: more context.
            _ => {
                window *= 4;
                margin *= 4;
            }
        }
    }
    Ok((ids, widest))
}

/// Ids from the end until more than `limit` are known (or the text starts), in text order.
fn walk_backward(
    tokenizer: &Tokenizer,
    text: &str,
    limit: Option<usize>,
) -> Result<(Vec<u32>, usize)> {
    let mut widest = 0;
    // Collected back to front; bytes `pos..` are tokenised, `edge` is the last token taken.
    let mut rev: Vec<u32> = Vec::new();
    let (mut pos, mut edge): (usize, Option<Tok>) = (text.len(), None);
    let (mut window, mut margin) = (WINDOW_BYTES, MARGIN_BYTES);
    while pos > 0 && limit.is_none_or(|l| rev.len() <= l) {
        let end = ceil_boundary(text, pos + margin);
        let start = floor_boundary(text, pos.saturating_sub(window));
        let first = start == 0;
        widest = widest.max(end - start);
        let w = encode_window(tokenizer, text, start..end)?;
        // One past the last token to take.
        let stop = match edge {
            None => Some(w.ids.len()),
            Some(edge) => continues(&w, pos, edge, false),
        };
        let keep_from = if first { 0 } else { start + margin };
        let n = stop.map_or(0, |stop| {
            w.offsets[..stop]
                .iter()
                .rev()
                .take_while(|&&(s, _)| s >= keep_from)
                .count()
        });
        match stop {
            Some(stop) if n > 0 => {
                rev.extend(w.ids[stop - n..stop].iter().rev());
                edge = Some((w.ids[stop - n], w.offsets[stop - n]));
                pos = if first { 0 } else { w.offsets[stop - n].0 };
                (window, margin) = (WINDOW_BYTES, MARGIN_BYTES);
            }
            Some(_) if first => break,
            _ if first && end == text.len() => {
                rev = w.ids;
                rev.reverse();
                break;
            }
            _ => {
                window *= 4;
                margin *= 4;
            }
        }
    }
    rev.reverse();
    Ok((rev, widest))
}
