//! Record MACs: keyed BLAKE3 over a canonical, unambiguous encoding of a row.
//!
//! A row is MAC'd as the *stored* SQLite values (integer, text, blob, …) of its columns, in a fixed order,
//! not as the Rust values they decode to. Writing builds one list of [`Field`]s that is both bound as the
//! statement's parameters and MAC'd, so what is stored and what is signed cannot drift apart; reading
//! verifies the raw column values first and decodes only a row that passed. A column whose type was changed
//! by an edit (an integer rewritten as text, say) therefore fails the MAC even if it would still decode.
//!
//! Encoding (every length and integer little-endian, 8 bytes):
//!
//! ```text
//! len(DOMAIN) DOMAIN  len(table) table  field_count  field*
//! field := 0x00                       NULL
//!        | 0x01 i64                   INTEGER
//!        | 0x02 f64-bits              REAL (never written by us; an edit may produce one)
//!        | 0x03 len bytes             TEXT
//!        | 0x04 len bytes             BLOB
//! ```
//!
//! Every element is either fixed-size or length-prefixed and the field count is explicit, so the encoding
//! is prefix-free and parses back uniquely: distinct (table, fields) give distinct byte strings (a proptest
//! checks this by parsing). The table name is part of the input and every table's fields include the row's
//! identity (row id, or the natural key such as bucket + key, or upload + part number + the parent's upload
//! id), so a row copied into another table or onto another row's identity fails its MAC.
//!
//! The key is 32 random bytes generated when the database is created and stored in its `meta` table. The MAC
//! therefore detects damage and edits made without reading the key (disk errors, a bad restore, a person with
//! the `sqlite3` shell); it is not a defence against someone who can read the file, and it need not be: the
//! file holds no secrets and anyone who can write it can also delete it.

use rusqlite::ToSql;
use rusqlite::types::{ToSqlOutput, ValueRef};

/// Length of a stored MAC.
pub(crate) const MAC_LEN: usize = 32;

/// Versioned domain separator: a future change of the encoding changes this string.
const DOMAIN: &[u8] = b"ossmirror/state/record-mac/v1";

/// One stored column value, borrowed from a row being read or a record being written.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Field<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a [u8]),
    Blob(&'a [u8]),
}

impl<'a> Field<'a> {
    pub(crate) fn text(s: &'a str) -> Self {
        Field::Text(s.as_bytes())
    }

    /// A `u64` stored as the `i64` with the same bits (SQLite integers are signed; CRC-64s use all 64 bits).
    pub(crate) fn u64(v: u64) -> Self {
        Field::Int(v as i64)
    }

    pub(crate) fn opt_text(s: Option<&'a str>) -> Self {
        s.map_or(Field::Null, Field::text)
    }

    pub(crate) fn opt_int(v: Option<i64>) -> Self {
        v.map_or(Field::Null, Field::Int)
    }

    /// Name of the SQLite storage class, for error messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Field::Null => "NULL",
            Field::Int(_) => "integer",
            Field::Real(_) => "real",
            Field::Text(_) => "text",
            Field::Blob(_) => "blob",
        }
    }
}

/// Bit-exact equality (a REAL compares by its bits, so `NaN == NaN` and `0.0 != -0.0`, as in the encoding).
impl PartialEq for Field<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Field::Null, Field::Null) => true,
            (Field::Int(a), Field::Int(b)) => a == b,
            (Field::Real(a), Field::Real(b)) => a.to_bits() == b.to_bits(),
            (Field::Text(a), Field::Text(b)) | (Field::Blob(a), Field::Blob(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Field<'_> {}

impl<'a> From<ValueRef<'a>> for Field<'a> {
    fn from(v: ValueRef<'a>) -> Self {
        match v {
            ValueRef::Null => Field::Null,
            ValueRef::Integer(i) => Field::Int(i),
            ValueRef::Real(r) => Field::Real(r),
            ValueRef::Text(t) => Field::Text(t),
            ValueRef::Blob(b) => Field::Blob(b),
        }
    }
}

impl ToSql for Field<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match *self {
            Field::Null => ValueRef::Null,
            Field::Int(i) => ValueRef::Integer(i),
            Field::Real(r) => ValueRef::Real(r),
            Field::Text(t) => ValueRef::Text(t),
            Field::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

fn put_len_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// The canonical encoding of a row of `table` (see the module docs).
pub(crate) fn encode(table: &str, fields: &[Field<'_>]) -> Vec<u8> {
    let payload: usize = fields
        .iter()
        .map(|f| match f {
            Field::Text(b) | Field::Blob(b) => 9 + b.len(),
            _ => 9,
        })
        .sum();
    let mut out = Vec::with_capacity(DOMAIN.len() + table.len() + 24 + payload);
    put_len_bytes(&mut out, DOMAIN);
    put_len_bytes(&mut out, table.as_bytes());
    out.extend_from_slice(&(fields.len() as u64).to_le_bytes());
    for field in fields {
        match *field {
            Field::Null => out.push(0),
            Field::Int(i) => {
                out.push(1);
                out.extend_from_slice(&i.to_le_bytes());
            }
            Field::Real(r) => {
                out.push(2);
                out.extend_from_slice(&r.to_bits().to_le_bytes());
            }
            Field::Text(t) => {
                out.push(3);
                put_len_bytes(&mut out, t);
            }
            Field::Blob(b) => {
                out.push(4);
                put_len_bytes(&mut out, b);
            }
        }
    }
    out
}

/// The per-database MAC key. `Debug` does not print it.
#[derive(Clone)]
pub(crate) struct MacKey([u8; 32]);

impl std::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MacKey(..)")
    }
}

impl MacKey {
    /// The key as stored in `meta`; `None` unless exactly 32 bytes.
    pub(crate) fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(MacKey)
    }

    pub(crate) fn mac(&self, table: &str, fields: &[Field<'_>]) -> [u8; MAC_LEN] {
        *blake3::keyed_hash(&self.0, &encode(table, fields)).as_bytes()
    }

    /// Check a stored MAC (any stored value: a NULL or a blob of the wrong length simply fails).
    pub(crate) fn verify(&self, table: &str, fields: &[Field<'_>], stored: Field<'_>) -> Result<(), String> {
        let Field::Blob(stored) = stored else {
            return Err(format!("MAC column holds {} instead of a blob", stored.kind()));
        };
        // `blake3::Hash` compares in constant time; not that timing matters here, but it costs nothing.
        if blake3::keyed_hash(&self.0, &encode(table, fields)) == *stored {
            Ok(())
        } else {
            Err("MAC mismatch: the record was modified or damaged".to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An owned field, for generating test cases.
    #[derive(Debug, Clone)]
    enum Owned {
        Null,
        Int(i64),
        Real(f64),
        Text(Vec<u8>),
        Blob(Vec<u8>),
    }

    impl Owned {
        fn field(&self) -> Field<'_> {
            match self {
                Owned::Null => Field::Null,
                Owned::Int(i) => Field::Int(*i),
                Owned::Real(r) => Field::Real(*r),
                Owned::Text(t) => Field::Text(t),
                Owned::Blob(b) => Field::Blob(b),
            }
        }
    }

    fn owned() -> impl Strategy<Value = Owned> {
        // Small alphabets and lengths so that "nearly equal" inputs (the interesting ones) are common.
        let bytes = || proptest::collection::vec(0u8..4, 0..6);
        prop_oneof![
            Just(Owned::Null),
            (-2i64..3).prop_map(Owned::Int),
            proptest::num::i64::ANY.prop_map(Owned::Int),
            proptest::num::f64::ANY.prop_map(Owned::Real),
            bytes().prop_map(Owned::Text),
            bytes().prop_map(Owned::Blob),
        ]
    }

    fn row() -> impl Strategy<Value = (String, Vec<Owned>)> {
        (
            prop_oneof![Just("uploads".to_string()), Just("parts".to_string()), "[a-c]{0,3}"],
            proptest::collection::vec(owned(), 0..5),
        )
    }

    /// Parse an encoding back into (table, fields); proves injectivity constructively.
    fn decode(mut b: &[u8]) -> Option<(Vec<u8>, Vec<Owned>)> {
        fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            if b.len() < n {
                return None;
            }
            let (head, tail) = b.split_at(n);
            *b = tail;
            Some(head)
        }
        fn u64_le(b: &mut &[u8]) -> Option<u64> {
            take(b, 8).map(|s| u64::from_le_bytes(s.try_into().unwrap()))
        }
        fn lv<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
            let n = usize::try_from(u64_le(b)?).ok()?;
            take(b, n)
        }
        if lv(&mut b)? != DOMAIN {
            return None;
        }
        let table = lv(&mut b)?.to_vec();
        let n = u64_le(&mut b)?;
        let mut fields = Vec::new();
        for _ in 0..n {
            let tag = take(&mut b, 1)?[0];
            fields.push(match tag {
                0 => Owned::Null,
                1 => Owned::Int(u64_le(&mut b)? as i64),
                2 => Owned::Real(f64::from_bits(u64_le(&mut b)?)),
                3 => Owned::Text(lv(&mut b)?.to_vec()),
                4 => Owned::Blob(lv(&mut b)?.to_vec()),
                _ => return None,
            });
        }
        b.is_empty().then_some((table, fields))
    }

    fn same(a: &(String, Vec<Owned>), b: &(String, Vec<Owned>)) -> bool {
        a.0 == b.0 && a.1.len() == b.1.len() && a.1.iter().zip(&b.1).all(|(x, y)| x.field() == y.field())
    }

    fn fields(o: &[Owned]) -> Vec<Field<'_>> {
        o.iter().map(Owned::field).collect()
    }

    proptest! {
        #[test]
        fn encoding_parses_back(r in row()) {
            let enc = encode(&r.0, &fields(&r.1));
            let (table, parsed) = decode(&enc).expect("parses");
            prop_assert_eq!(table, r.0.as_bytes().to_vec());
            prop_assert!(same(&(r.0.clone(), parsed), &r));
        }

        #[test]
        fn distinct_rows_encode_distinctly(a in row(), b in row()) {
            let (ea, eb) = (encode(&a.0, &fields(&a.1)), encode(&b.0, &fields(&b.1)));
            prop_assert_eq!(ea == eb, same(&a, &b));
        }

        #[test]
        fn any_single_field_change_fails_the_mac(
            r in row().prop_filter("needs a field", |r| !r.1.is_empty()),
            index in any::<proptest::sample::Index>(),
            replacement in owned(),
        ) {
            let key = MacKey([7; 32]);
            let mac = key.mac(&r.0, &fields(&r.1));
            prop_assert!(key.verify(&r.0, &fields(&r.1), Field::Blob(&mac)).is_ok());
            let mut changed = r.clone();
            let i = index.index(changed.1.len());
            changed.1[i] = replacement;
            let verdict = key.verify(&changed.0, &fields(&changed.1), Field::Blob(&mac));
            prop_assert_eq!(verdict.is_ok(), same(&r, &changed));
            // The same row under another table name never verifies.
            let other_table = format!("{}x", r.0);
            prop_assert!(key.verify(&other_table, &fields(&r.1), Field::Blob(&mac)).is_err());
        }
    }

    #[test]
    fn wrong_key_or_malformed_mac_fails() {
        let row = [Field::Int(1), Field::text("b")];
        let mac = MacKey([1; 32]).mac("t", &row);
        assert!(MacKey([1; 32]).verify("t", &row, Field::Blob(&mac)).is_ok());
        assert!(MacKey([2; 32]).verify("t", &row, Field::Blob(&mac)).is_err());
        assert!(MacKey([1; 32]).verify("t", &row, Field::Blob(&mac[..31])).is_err());
        assert!(MacKey([1; 32]).verify("t", &row, Field::Null).is_err());
        assert!(MacKey([1; 32]).verify("t", &row, Field::Text(&mac)).is_err());
        assert!(MacKey::from_slice(&[0; 31]).is_none());
        assert_eq!(format!("{:?}", MacKey([9; 32])), "MacKey(..)");
    }
}
