//! Checkpoints: the head's position and hash, signed with a key derived from the vault key
//! ([`LABEL`], see `Cipher::derived`), published outside the database — an info line in the app
//! log, an `audit.checkpoint` webhook event, a line appended to `audit_checkpoint_file` — at
//! start-up, every `audit_checkpoint_interval` and on `tokenvault audit checkpoint`.
//!
//! No chain kept only in the database can tell a log from an older copy of itself: an attacker
//! with write access can put back an earlier genuine head, delete what followed, and the chain
//! verifies. A checkpoint taken before says "entry N had hash H": `tokenvault audit verify
//! --checkpoint N:H` (or `--checkpoint-file`) fails when the log no longer has that entry with
//! that hash ([`Finding`]). The signature lets a checkpoint line be told from a forged one; it
//! needs only the vault key, not the database.

use std::io::Write;
use std::path::Path;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::{chain_key, AnchorMove, Broken};
use crate::db::models::audit::{self as rows, Head};
use crate::db::Conn;
use crate::error::AppResult;
use crate::util::{hex, now};
use crate::vault::Cipher;

/// The label of the key derived from the vault key that signs checkpoints.
pub const LABEL: &str = "tokenvault audit checkpoint v1";

/// One checkpoint, as published: the JSON object of a checkpoint-file line, of the webhook
/// event's `data`, and of the app log line's fields. Never a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The head's position: the id of the last entry then.
    pub seq: i64,
    /// The hash of that entry (of the genesis, or of the anchor, at position 0 / the anchor).
    pub hash: String,
    /// When the checkpoint was made (unix seconds).
    pub at: i64,
    /// The id of the vault key whose derived key signed it (as `tokenvault check` prints it).
    pub key_id: String,
    /// HMAC-SHA256 (hex) of `seq`, `hash` and `at` with that key.
    pub signature: String,
}

/// Whether a checkpoint's signature is tokenvault's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authenticity {
    Valid,
    /// Signed with a configured vault key, but the signature does not match: not written by
    /// tokenvault (forged or damaged) — itself a finding.
    Forged,
    /// Signed with a vault key that is not configured (rotated away, or another deployment's):
    /// it can still be compared with the log, but not authenticated.
    UnknownKey,
}

fn signature(key: &[u8], seq: i64, hash: &str, at: i64) -> String {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(LABEL.as_bytes());
    m.update(&[0]);
    m.update(&seq.to_be_bytes());
    m.update(&(hash.len() as u32).to_be_bytes());
    m.update(hash.as_bytes());
    m.update(&at.to_be_bytes());
    hex(&m.finalize().into_bytes())
}

impl Checkpoint {
    /// A checkpoint of (`seq`, `hash`) at `at`, signed with the active vault key's derived key.
    pub fn sign(cipher: &Cipher, seq: i64, hash: &str, at: i64) -> Checkpoint {
        let key = cipher.derived(LABEL);
        Checkpoint {
            seq,
            hash: hash.to_string(),
            at,
            signature: signature(&key.key[..], seq, hash, at),
            key_id: key.key_id,
        }
    }

    /// Whether the signature is that of the configured vault key it names.
    pub fn authenticity(&self, cipher: &Cipher) -> Authenticity {
        match cipher.derived_with(&self.key_id, LABEL) {
            None => Authenticity::UnknownKey,
            Some(key)
                if crate::util::ct_eq(&signature(&key.key[..], self.seq, &self.hash, self.at), &self.signature) =>
            {
                Authenticity::Valid
            }
            Some(_) => Authenticity::Forged,
        }
    }

    /// One line of a checkpoint file (JSON, no newline).
    pub fn line(&self) -> String {
        serde_json::to_string(self).expect("a checkpoint serialises")
    }

    /// A line of a checkpoint file.
    pub fn parse(line: &str) -> Result<Checkpoint, String> {
        let c: Checkpoint = serde_json::from_str(line.trim()).map_err(|e| format!("not a checkpoint line ({e})"))?;
        check_hash(&c.hash)?;
        Ok(c)
    }

    /// `<seq>:<hash>` (what `--checkpoint` takes, and the app log line's `checkpoint` field).
    pub fn short(&self) -> String {
        format!("{}:{}", self.seq, self.hash)
    }
}

fn check_hash(hash: &str) -> Result<(), String> {
    if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err("the hash must be 64 hexadecimal digits".into())
    }
}

/// `<seq>:<hash>` as given to `tokenvault audit verify --checkpoint`.
pub fn parse_claim(text: &str) -> Result<(i64, String), String> {
    let (seq, hash) = text.trim().split_once(':').ok_or("a checkpoint is <seq>:<hash>")?;
    let seq: i64 = seq.trim().parse().map_err(|_| format!("`{seq}` is not an entry id"))?;
    if seq < 0 {
        return Err("the entry id must not be negative".into());
    }
    let hash = hash.trim().to_ascii_lowercase();
    check_hash(&hash)?;
    Ok((seq, hash))
}

/// A checkpoint of the head as it is now — only of a head whose MAC verifies, so that a head set
/// by hand is never vouched for.
pub fn current(conn: &mut Conn, cipher: &Cipher) -> AppResult<Result<Checkpoint, Broken>> {
    let head = rows::head(conn)?;
    if head.mac.is_none() {
        return Ok(Err(Broken::NotStarted));
    }
    let Some(key) = chain_key(conn, cipher)? else { return Ok(Err(Broken::KeyMissing)) };
    if !key.authenticates(&head) {
        return Ok(Err(Broken::HeadChanged));
    }
    Ok(Ok(Checkpoint::sign(cipher, head.seq, &head.hash, now())))
}

/// What the log says about a checkpoint's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The log holds the entry with that hash.
    Holds,
    /// The entry was removed by retention pruning (or before an `audit restart`), as the
    /// verified entry `by` says: it cannot be compared any more, which is not tampering.
    Removed(AnchorMove),
    /// The log starts after the entry (its anchor is past it) and no verified `audit.pruned` or
    /// `audit.restarted` entry explains it.
    RemovedUnexplained { anchor: i64 },
    /// The log ends before the entry: entries after `ends_at` were cut and the head rolled back.
    Ahead { ends_at: i64 },
    /// The entry has another hash: the log was replaced, restarted or rebuilt.
    Differs { actual: String },
    /// The position is in the log's range but there is no entry there.
    Missing,
}

impl Finding {
    /// Whether it means the log is not the one checkpointed.
    pub fn is_failure(&self) -> bool {
        !matches!(self, Finding::Holds | Finding::Removed(_))
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::Holds => f.write_str("the log holds that entry with that hash"),
            Finding::Removed(m) if m.kind == super::Kind::AuditRestarted.as_str() => write!(
                f,
                "archived when the log was restarted after entry {} (audit.restarted entry {}, which says why): not in \
                 this log any more",
                m.through, m.entry
            ),
            Finding::Removed(m) => write!(
                f,
                "removed by retention pruning with the entries through {} (audit.pruned entry {}): not comparable any \
                 more — not tampering",
                m.through, m.entry
            ),
            Finding::RemovedUnexplained { anchor } => write!(
                f,
                "the log now starts after entry {anchor}, past this entry, and no audit.pruned entry explains it: \
                 entries were removed"
            ),
            Finding::Ahead { ends_at } => write!(
                f,
                "the log ends at entry {ends_at}, before this entry: the entries after {ends_at} were cut off and the \
                 head rolled back"
            ),
            Finding::Differs { actual } => write!(
                f,
                "the log's entry has hash {actual}: the log was replaced, restarted or rebuilt since the checkpoint"
            ),
            Finding::Missing => f.write_str("the entry is missing from the log"),
        }
    }
}

/// What the log (its head as stored, and the verified entry that explains its anchor, when the
/// chain was walked) says about the checkpoint (`seq`, `hash`).
pub fn check(
    conn: &mut Conn,
    head: &Head,
    anchor_moved_by: Option<&AnchorMove>,
    seq: i64,
    hash: &str,
) -> AppResult<Finding> {
    let differs = |actual: &str| {
        if crate::util::ct_eq(actual, hash) {
            Finding::Holds
        } else {
            Finding::Differs { actual: actual.to_string() }
        }
    };
    Ok(if seq > head.seq {
        Finding::Ahead { ends_at: head.seq }
    } else if seq == head.anchor_id {
        differs(&head.anchor_hash)
    } else if seq < head.anchor_id {
        match anchor_moved_by {
            Some(m) if m.through >= seq => Finding::Removed(m.clone()),
            _ => Finding::RemovedUnexplained { anchor: head.anchor_id },
        }
    } else {
        match rows::find(conn, seq)? {
            Some(row) => differs(&row.hash),
            None => Finding::Missing,
        }
    })
}

/// Append `checkpoint` as one line to `path`, created with mode 0600 when missing, opened for
/// appending only (`O_APPEND`), synced before returning.
pub fn append_to_file(path: &Path, checkpoint: &Checkpoint) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    // One write of the whole line: appends of several instances do not interleave.
    file.write_all(format!("{}\n", checkpoint.line()).as_bytes())?;
    file.sync_data()
}

/// The lines of a checkpoint file, numbered from 1 (blank lines skipped), each parsed.
pub fn read_file(path: &Path) -> std::io::Result<Vec<(usize, Result<Checkpoint, String>)>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, Checkpoint::parse(l)))
        .collect())
}

/// Where a published checkpoint went, and what failed.
#[derive(Debug)]
pub struct Published {
    pub checkpoint: Checkpoint,
    /// The channels that failed (file, webhook event), each with its error; also logged.
    pub problems: Vec<String>,
}

/// Make a checkpoint of the head and publish it: an info line in the app log, a line appended to
/// `file` when set, and `record_event` — the `audit.checkpoint` webhook event, recorded by the
/// caller (`webhooks` sits above this module). Each channel is tried whatever the others did.
/// `Ok(Err(_))`: the head is not authenticated, and nothing is published.
pub fn publish(
    conn: &mut Conn,
    cipher: &Cipher,
    file: Option<&Path>,
    record_event: &dyn Fn(&mut Conn, &Checkpoint) -> AppResult<()>,
) -> AppResult<Result<Published, Broken>> {
    let checkpoint = match current(conn, cipher)? {
        Ok(c) => c,
        Err(b) => return Ok(Err(b)),
    };
    tracing::info!(
        checkpoint = %checkpoint.short(),
        seq = checkpoint.seq,
        hash = %checkpoint.hash,
        at = checkpoint.at,
        key_id = %checkpoint.key_id,
        signature = %checkpoint.signature,
        "audit checkpoint"
    );
    let mut problems = Vec::new();
    if let Some(path) = file {
        if let Err(e) = append_to_file(path, &checkpoint) {
            tracing::error!(file = %path.display(), "the audit checkpoint could not be appended to audit_checkpoint_file: {e}");
            problems.push(format!("audit_checkpoint_file {}: {e}", path.display()));
        }
    }
    if let Err(e) = record_event(conn, &checkpoint) {
        tracing::error!("the audit.checkpoint webhook event could not be recorded: {e}");
        problems.push(format!("webhook event: {e}"));
    }
    Ok(Ok(Published { checkpoint, problems }))
}

/// Whether the log still holds what an earlier checkpoint of this process said (the server's
/// periodic check between two checkpoints): `Some(why not)` when its head went back before it or
/// its entry changed. Entries removed by pruning are not judged here (`verify` does).
pub fn still_holds(conn: &mut Conn, earlier: &Checkpoint) -> AppResult<Option<Finding>> {
    let head = rows::head(conn)?;
    let finding = check(conn, &head, None, earlier.seq, &earlier.hash)?;
    Ok(match finding {
        Finding::Holds | Finding::Removed(_) | Finding::RemovedUnexplained { .. } => None,
        other => Some(other),
    })
}

/// Record the `audit.checkpoint` webhook event (the caller's: `webhooks` sits above this module;
/// `crate::changes::checkpoint_event`, a unit of work).
pub type RecordEvent = dyn Fn(&mut Conn, &Checkpoint) -> AppResult<()> + Send + Sync;

/// The server's checkpoints, a background job (`crate::jobs`): one at start-up, then every
/// `every` when the head has moved since the last one. Before each, the log must still hold this
/// instance's previous checkpoint: if it does not (its head went back, or that entry changed),
/// that is logged as an error and counted (`inconsistent`), and the new head is published all the
/// same. Counted in `tokenvault_audit_checkpoints_total{result}`.
pub struct Publisher {
    db: crate::db::Db,
    cipher: std::sync::Arc<Cipher>,
    file: Option<std::path::PathBuf>,
    metrics: crate::audit::metrics::AuditMetrics,
    record_event: std::sync::Arc<RecordEvent>,
    last: Option<Checkpoint>,
}

impl Publisher {
    pub fn new(
        db: crate::db::Db,
        cipher: std::sync::Arc<Cipher>,
        file: Option<std::path::PathBuf>,
        metrics: crate::audit::metrics::AuditMetrics,
        record_event: std::sync::Arc<RecordEvent>,
    ) -> Publisher {
        Publisher { db, cipher, file, metrics, record_event, last: None }
    }

    /// One checkpoint round (a failure is counted and logged here, and returned).
    async fn round(&mut self) -> Result<(), String> {
        let (c, f, previous, record) =
            (self.cipher.clone(), self.file.clone(), self.last.clone(), self.record_event.clone());
        let round = self
            .db
            .run(move |conn| {
                let gone = match &previous {
                    Some(p) => still_holds(conn, p)?,
                    None => None,
                };
                let head = rows::head(conn)?;
                if gone.is_none() && previous.as_ref().is_some_and(|p| p.seq == head.seq && p.hash == head.hash) {
                    return Ok(None); // Nothing new since the last one.
                }
                Ok(Some((publish(conn, &c, f.as_deref(), &*record)?, gone, previous)))
            })
            .await;
        let metrics = &self.metrics;
        match round {
            Ok(None) => Ok(()),
            Ok(Some((published, gone, previous))) => {
                if let (Some(finding), Some(p)) = (gone, previous) {
                    metrics.checkpoint("inconsistent");
                    tracing::error!(
                        checkpoint = %p.short(),
                        "the audit log no longer holds this instance's previous checkpoint: {finding}. Run `tokenvault \
                         audit verify --checkpoint {}`",
                        p.short()
                    );
                }
                match published {
                    Ok(p) => {
                        metrics.checkpoint("published");
                        if !p.problems.is_empty() {
                            metrics.checkpoint("failed");
                        }
                        self.last = Some(p.checkpoint);
                        Ok(())
                    }
                    Err(broken) => {
                        metrics.checkpoint("failed");
                        tracing::error!("no audit checkpoint published: {broken}. Run `tokenvault audit verify`");
                        Err("no audit checkpoint published".into())
                    }
                }
            }
            Err(e) => {
                metrics.checkpoint("failed");
                Err(format!("no audit checkpoint published: {e}"))
            }
        }
    }
}

#[rocket::async_trait]
impl crate::jobs::Job for Publisher {
    fn name(&self) -> &'static str {
        "audit_checkpoint"
    }

    async fn run(&mut self, _stop: &tokio_util::sync::CancellationToken) -> Result<crate::jobs::Next, String> {
        self.round().await.map(|()| crate::jobs::Next::Idle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_with_their_key_only_and_name_forgeries() {
        let cipher = Cipher::for_tests(7);
        let c = Checkpoint::sign(&cipher, 42, &"ab".repeat(32), 1_800_000_000);
        assert_eq!(c.authenticity(&cipher), Authenticity::Valid);
        assert_eq!(Checkpoint::parse(&c.line()).unwrap(), c);
        // Any field changed: forged.
        for forged in [
            Checkpoint { seq: 43, ..c.clone() },
            Checkpoint { hash: "cd".repeat(32), ..c.clone() },
            Checkpoint { at: c.at + 1, ..c.clone() },
        ] {
            assert_eq!(forged.authenticity(&cipher), Authenticity::Forged);
        }
        // Another deployment's key (or one rotated away): not authenticated, not forged.
        assert_eq!(c.authenticity(&Cipher::for_tests(8)), Authenticity::UnknownKey);
        // A golden signature (computed independently): lines written today verify for as long as
        // the vault key is configured.
        assert_eq!(c.key_id, cipher.active_key_id());
        assert_eq!(c.signature, "fa8dfd49355c695daeb2acdc4b276cefe0688e2c6b3297f977f13d0f3397b12b");
        assert!(Checkpoint::parse("{\"seq\":1}").is_err());
        assert!(Checkpoint::parse(&c.line().replace(&c.hash, "xyz")).is_err());
        assert_eq!(parse_claim(&format!(" 7:{}", "AB".repeat(32))).unwrap(), (7, "ab".repeat(32)));
        for bad in ["7", "x:ab", "-1:ab", &format!("7:{}", "a".repeat(63))] {
            assert!(parse_claim(bad).is_err(), "{bad}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn the_checkpoint_file_is_created_private_and_appended_to() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoints");
        let cipher = Cipher::for_tests(1);
        let a = Checkpoint::sign(&cipher, 1, &"aa".repeat(32), 10);
        let b = Checkpoint::sign(&cipher, 2, &"bb".repeat(32), 20);
        append_to_file(&path, &a).unwrap();
        append_to_file(&path, &b).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let lines = read_file(&path).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], (1, Ok(a)));
        assert_eq!(lines[1], (2, Ok(b)));
    }
}
