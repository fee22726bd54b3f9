//! Records ⇄ stored column values.
//!
//! Each table has a function building the [`Field`] list that is both bound and MAC'd (in the order of its
//! `*_COLS` list), and a decoder from verified fields back to the record. Decoders never panic: a value of
//! the wrong type or out of range is reported as a reason string, which the caller turns into "damaged".

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::Row;

use super::mac::Field;
use super::schema::{PART_COLS, SYNCED_COLS, UPLOAD_COLS};
use super::{PartRecord, SyncedFile, UploadRecord, UploadRowId};
use crate::checksum::Blake3;
use crate::snapshot::FileSnapshot;

pub(crate) fn path_bytes(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

/// Nanoseconds since the epoch, saturating outside ±292 years (the stored value is what gets MAC'd, so a
/// saturated time still verifies; it just reads back clamped).
pub(crate) fn time_to_ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_nanos()).map(|n| -n).unwrap_or(i64::MIN),
    }
}

pub(crate) fn ns_to_time(ns: i64) -> SystemTime {
    let magnitude = Duration::from_nanos(ns.unsigned_abs());
    let t = if ns >= 0 { UNIX_EPOCH.checked_add(magnitude) } else { UNIX_EPOCH.checked_sub(magnitude) };
    t.unwrap_or(UNIX_EPOCH)
}

/// The raw values of columns `0..n` of `row` and the MAC in column `n`.
pub(crate) fn raw<'r>(row: &'r Row<'_>, n: usize) -> rusqlite::Result<(Vec<Field<'r>>, Field<'r>)> {
    let mut fields = Vec::with_capacity(n);
    for i in 0..n {
        fields.push(Field::from(row.get_ref(i)?));
    }
    Ok((fields, Field::from(row.get_ref(n)?)))
}

/// Typed access to verified fields, with the column names for error messages.
pub(crate) struct Decode<'f, 'a> {
    fields: &'f [Field<'a>],
    cols: &'static str,
    /// Index of `cols`' first column in `fields` (1 for parts, whose field 0 is the parent's upload id).
    offset: usize,
}

impl<'f, 'a> Decode<'f, 'a> {
    pub(crate) fn new(fields: &'f [Field<'a>], cols: &'static str, offset: usize) -> Self {
        Decode { fields, cols, offset }
    }

    fn name(&self, i: usize) -> &'static str {
        i.checked_sub(self.offset).and_then(|c| self.cols.split(", ").nth(c)).unwrap_or("?")
    }

    fn field(&self, i: usize) -> Result<Field<'a>, String> {
        self.fields.get(i).copied().ok_or_else(|| format!("column {} is missing", self.name(i)))
    }

    fn wrong(&self, i: usize, want: &str, got: Field<'_>) -> String {
        format!("column {}: expected {want}, found {}", self.name(i), got.kind())
    }

    pub(crate) fn i64(&self, i: usize) -> Result<i64, String> {
        match self.field(i)? {
            Field::Int(v) => Ok(v),
            other => Err(self.wrong(i, "integer", other)),
        }
    }

    pub(crate) fn opt_i64(&self, i: usize) -> Result<Option<i64>, String> {
        match self.field(i)? {
            Field::Null => Ok(None),
            Field::Int(v) => Ok(Some(v)),
            other => Err(self.wrong(i, "integer or NULL", other)),
        }
    }

    /// A `u64` stored with the same bits as an `i64`.
    pub(crate) fn u64(&self, i: usize) -> Result<u64, String> {
        self.i64(i).map(|v| v as u64)
    }

    pub(crate) fn u32(&self, i: usize) -> Result<u32, String> {
        let v = self.i64(i)?;
        u32::try_from(v).map_err(|_| format!("column {}: {v} is out of range", self.name(i)))
    }

    pub(crate) fn str(&self, i: usize) -> Result<&'a str, String> {
        match self.field(i)? {
            Field::Text(t) => std::str::from_utf8(t).map_err(|_| format!("column {}: not UTF-8", self.name(i))),
            other => Err(self.wrong(i, "text", other)),
        }
    }

    pub(crate) fn string(&self, i: usize) -> Result<String, String> {
        self.str(i).map(str::to_owned)
    }

    pub(crate) fn opt_string(&self, i: usize) -> Result<Option<String>, String> {
        match self.field(i)? {
            Field::Null => Ok(None),
            _ => self.string(i).map(Some),
        }
    }

    pub(crate) fn blob(&self, i: usize) -> Result<&'a [u8], String> {
        match self.field(i)? {
            Field::Blob(b) => Ok(b),
            other => Err(self.wrong(i, "blob", other)),
        }
    }

    pub(crate) fn path(&self, i: usize) -> Result<PathBuf, String> {
        self.blob(i).map(|b| PathBuf::from(OsStr::from_bytes(b)))
    }

    pub(crate) fn blake3(&self, i: usize) -> Result<Blake3, String> {
        let b = self.blob(i)?;
        Blake3::try_from(b).map_err(|_| format!("column {}: {} bytes, expected 32", self.name(i), b.len()))
    }

    /// Five consecutive snapshot columns: size, mtime_ns, ctime_ns, inode, dev.
    pub(crate) fn snapshot(&self, i: usize) -> Result<FileSnapshot, String> {
        Ok(FileSnapshot {
            size: self.u64(i)?,
            mtime_ns: self.i64(i + 1)?,
            ctime_ns: self.i64(i + 2)?,
            inode: self.u64(i + 3)?,
            dev: self.u64(i + 4)?,
        })
    }

    /// Text at `i` if it is readable (for describing damaged rows).
    pub(crate) fn best_effort_string(&self, i: usize) -> Option<String> {
        self.string(i).ok()
    }
}

fn snapshot_fields(s: &FileSnapshot) -> [Field<'static>; 5] {
    [Field::u64(s.size), Field::Int(s.mtime_ns), Field::Int(s.ctime_ns), Field::u64(s.inode), Field::u64(s.dev)]
}

// ---- uploads ----------------------------------------------------------------------------------------------

pub(crate) const UPLOAD_N: usize = super::schema::count(UPLOAD_COLS);
/// Index of `upload_id` in an upload row's fields (as [`UploadRow::fields`] and [`decode_upload`] use it).
pub(crate) const UPLOAD_ID_FIELD: usize = 4;

/// The stored form of an upload row (borrowing, so `begin_upload` and `update_snapshot` share it).
pub(crate) struct UploadRow<'a> {
    pub id: i64,
    pub local_path: &'a Path,
    pub bucket: &'a str,
    pub key: &'a str,
    pub upload_id: &'a str,
    pub part_size: u64,
    pub snapshot: FileSnapshot,
    pub options_fingerprint: &'a str,
    pub created_at_ns: i64,
}

impl<'a> UploadRow<'a> {
    pub(crate) fn of(r: &'a UploadRecord) -> Self {
        UploadRow {
            id: r.id.0,
            local_path: &r.local_path,
            bucket: &r.bucket,
            key: &r.key,
            upload_id: &r.upload_id,
            part_size: r.part_size,
            snapshot: r.snapshot,
            options_fingerprint: &r.options_fingerprint,
            created_at_ns: time_to_ns(r.created_at),
        }
    }

    pub(crate) fn fields(&self) -> Vec<Field<'a>> {
        let mut f = vec![
            Field::Int(self.id),
            Field::Blob(path_bytes(self.local_path)),
            Field::text(self.bucket),
            Field::text(self.key),
            Field::text(self.upload_id),
            Field::u64(self.part_size),
        ];
        f.extend(snapshot_fields(&self.snapshot));
        f.push(Field::text(self.options_fingerprint));
        f.push(Field::Int(self.created_at_ns));
        debug_assert_eq!(f.len(), UPLOAD_N);
        f
    }
}

pub(crate) fn decode_upload(fields: &[Field<'_>]) -> Result<UploadRecord, String> {
    let d = Decode::new(fields, UPLOAD_COLS, 0);
    Ok(UploadRecord {
        id: UploadRowId(d.i64(0)?),
        local_path: d.path(1)?,
        bucket: d.string(2)?,
        key: d.string(3)?,
        upload_id: d.string(UPLOAD_ID_FIELD)?,
        part_size: d.u64(5)?,
        snapshot: d.snapshot(6)?,
        options_fingerprint: d.string(11)?,
        created_at: ns_to_time(d.i64(12)?),
    })
}

// ---- parts ------------------------------------------------------------------------------------------------

pub(crate) const PART_N: usize = super::schema::count(PART_COLS);

/// MAC'd fields of a part row: the parent's server upload id (not stored in the row; it binds the part to
/// that exact multipart upload), then the stored columns.
pub(crate) fn part_fields<'a>(upload: UploadRowId, parent_upload_id: &'a [u8], p: &'a PartRecord) -> Vec<Field<'a>> {
    vec![
        Field::Text(parent_upload_id),
        Field::Int(upload.0),
        Field::Int(i64::from(p.part_number)),
        Field::u64(p.size),
        Field::text(&p.etag),
        Field::u64(p.crc64),
        Field::Blob(&p.blake3),
    ]
}

/// `fields` as built by [`part_fields`] (parent upload id first).
pub(crate) fn decode_part(fields: &[Field<'_>]) -> Result<PartRecord, String> {
    let d = Decode::new(fields, PART_COLS, 1);
    Ok(PartRecord {
        part_number: d.u32(2)?,
        size: d.u64(3)?,
        etag: d.string(4)?,
        crc64: d.u64(5)?,
        blake3: d.blake3(6)?,
    })
}

// ---- synced -----------------------------------------------------------------------------------------------

pub(crate) const SYNCED_N: usize = super::schema::count(SYNCED_COLS);

pub(crate) fn concat_hashes(hashes: &[Blake3]) -> Vec<u8> {
    hashes.concat()
}

/// `part_blake3` is the caller's [`concat_hashes`] of `s.part_blake3`.
pub(crate) fn synced_fields<'a>(s: &'a SyncedFile, part_blake3: &'a [u8]) -> Vec<Field<'a>> {
    let mut f = vec![Field::text(&s.bucket), Field::text(&s.key), Field::Blob(path_bytes(&s.local_path))];
    f.extend(snapshot_fields(&s.snapshot));
    f.extend([
        Field::u64(s.size),
        Field::u64(s.crc64),
        Field::text(&s.etag),
        Field::u64(s.part_size),
        Field::Blob(part_blake3),
        Field::Int(time_to_ns(s.synced_at)),
        Field::opt_text(s.object_meta.as_deref()),
    ]);
    debug_assert_eq!(f.len(), SYNCED_N);
    f
}

pub(crate) fn decode_synced(fields: &[Field<'_>]) -> Result<SyncedFile, String> {
    let d = Decode::new(fields, SYNCED_COLS, 0);
    let hashes = d.blob(12)?;
    if hashes.len() % 32 != 0 {
        return Err(format!("column part_blake3: {} bytes is not a whole number of digests", hashes.len()));
    }
    Ok(SyncedFile {
        bucket: d.string(0)?,
        key: d.string(1)?,
        local_path: d.path(2)?,
        snapshot: d.snapshot(3)?,
        size: d.u64(8)?,
        crc64: d.u64(9)?,
        etag: d.string(10)?,
        part_size: d.u64(11)?,
        part_blake3: hashes.chunks_exact(32).filter_map(|c| Blake3::try_from(c).ok()).collect(),
        synced_at: ns_to_time(d.i64(13)?),
        object_meta: d.opt_string(14)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_round_trips_and_saturates() {
        for ns in [0i64, 1, -1, 1_700_000_000_123_456_789, -86_400_000_000_000, i64::MAX, i64::MIN + 1] {
            assert_eq!(time_to_ns(ns_to_time(ns)), ns, "{ns}");
        }
        let far = UNIX_EPOCH + Duration::from_secs(400 * 365 * 86_400);
        assert_eq!(time_to_ns(far), i64::MAX);
        let now = SystemTime::now();
        assert_eq!(ns_to_time(time_to_ns(now)), now);
    }

    #[test]
    fn wrong_types_are_reasons_not_panics() {
        let fields = [Field::text("x"), Field::Int(-1), Field::Blob(&[1, 2])];
        let d = Decode::new(&fields, UPLOAD_COLS, 0);
        assert!(d.i64(0).unwrap_err().contains("column id"));
        assert!(d.u32(1).unwrap_err().contains("out of range"));
        assert!(d.blake3(2).unwrap_err().contains("2 bytes"));
        assert!(d.i64(7).unwrap_err().contains("missing"));
        assert!(Decode::new(&[Field::Text(b"\xff")], UPLOAD_COLS, 0).str(0).is_err());
    }
}
