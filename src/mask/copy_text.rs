//! Masking PostgreSQL rows in COPY text format while they stream: rows end
//! at a raw newline and fields at a raw tab (both are escaped inside
//! values), so a masked field is unescaped, transformed and escaped again
//! while every other byte passes through untouched.

use std::sync::Arc;

use super::transform::{MaskKey, Refused, Transformer};
use crate::copy_text::escape;

/// Masks the rows of one table, however its text is split into pieces.
pub struct RowMasker {
    plan: TablePlan,
    key: Arc<MaskKey>,
    /// The start of a row whose newline has not arrived yet.
    carry: Vec<u8>,
    /// A masked field's unescaped bytes, reused from field to field.
    scratch: Vec<u8>,
    rows: u64,
}

/// One table's COPY columns in order and the transformer of each (None:
/// passed through).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TablePlan {
    pub columns: Vec<String>,
    pub transformers: Vec<Option<Transformer>>,
}

impl TablePlan {
    /// Whether any column of the table is masked.
    pub fn masks(&self) -> bool {
        self.transformers.iter().any(Option::is_some)
    }
}

/// A row the masker cannot mask: a different number of fields than the
/// table has columns (the stored text is damaged), or a value the
/// column's transformer refuses (the refresh must end, exit 2).
#[derive(Debug, thiserror::Error)]
pub enum BadRow {
    #[error("row {row} has {found} fields where the table has {expected} columns")]
    Shape {
        row: u64,
        found: usize,
        expected: usize,
    },
    #[error("row {row}, column {column}: {refused}")]
    Refused {
        row: u64,
        column: String,
        refused: Refused,
    },
}

impl RowMasker {
    pub fn new(plan: TablePlan, key: Arc<MaskKey>) -> RowMasker {
        RowMasker {
            plan,
            key,
            carry: Vec::new(),
            scratch: Vec::new(),
            rows: 0,
        }
    }

    /// A masker with the same columns and key, at the start of a table.
    pub fn fresh(&self) -> RowMasker {
        RowMasker::new(self.plan.clone(), self.key.clone())
    }

    /// Masks every row `piece` completes and appends it to `out`.
    pub fn push(&mut self, piece: &[u8], out: &mut Vec<u8>) -> Result<(), BadRow> {
        let mut rest = piece;
        while let Some(end) = memchr::memchr(b'\n', rest) {
            if self.carry.is_empty() {
                self.mask_row(&rest[..end], out)?;
            } else {
                let mut row = std::mem::take(&mut self.carry);
                row.extend_from_slice(&rest[..end]);
                self.mask_row(&row, out)?;
            }
            rest = &rest[end + 1..];
        }
        self.carry.extend_from_slice(rest);
        Ok(())
    }

    /// The end of the table's text: a row without its newline is refused.
    pub fn finish(&mut self) -> Result<(), BadRow> {
        if self.carry.is_empty() {
            return Ok(());
        }
        Err(BadRow::Shape {
            row: self.rows + 1,
            found: self.carry.split(|b| *b == b'\t').count(),
            expected: self.plan.transformers.len(),
        })
    }

    fn mask_row(&mut self, row: &[u8], out: &mut Vec<u8>) -> Result<(), BadRow> {
        self.rows += 1;
        let found = memchr::memchr_iter(b'\t', row).count() + 1;
        if found != self.plan.transformers.len() {
            return Err(BadRow::Shape {
                row: self.rows,
                found,
                expected: self.plan.transformers.len(),
            });
        }
        for (i, field) in row.split(|b| *b == b'\t').enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            match &self.plan.transformers[i] {
                Some(t) if field != b"\\N" => {
                    crate::copy_text::unescape(field, &mut self.scratch);
                    let value = String::from_utf8_lossy(&self.scratch);
                    match t.apply(&self.key, &value) {
                        Ok(Some(masked)) => escape(masked.as_bytes(), out),
                        Ok(None) => out.extend_from_slice(b"\\N"),
                        Err(refused) => {
                            return Err(BadRow::Refused {
                                row: self.rows,
                                column: self.plan.columns.get(i).cloned().unwrap_or_default(),
                                refused,
                            })
                        }
                    }
                }
                _ => out.extend_from_slice(field),
            }
        }
        out.push(b'\n');
        Ok(())
    }
}

/// A COPY text field's bytes (`\N` handled by the caller).
pub fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    crate::copy_text::unescape(field, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masker() -> RowMasker {
        let key = Arc::new(MaskKey::new(&[7u8; 32]).unwrap());
        RowMasker::new(
            TablePlan {
                columns: vec!["id".into(), "email".into(), "note".into()],
                transformers: vec![None, Some(Transformer::Email), Some(Transformer::Null)],
            },
            key,
        )
    }

    fn masked_whole(text: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut m = masker();
        m.push(text, &mut out).unwrap();
        m.finish().unwrap();
        out
    }

    #[test]
    fn masked_columns_change_and_the_others_pass_through_byte_for_byte() {
        let text = b"1\tanna@kunde.de\tnotiz\n2\t\\N\t\\N\n3\tb\\tx@y\tz\\\\\n";
        let out = masked_whole(text);
        let rows: Vec<&[u8]> = out.split(|b| *b == b'\n').collect();
        assert!(rows[0].starts_with(b"1\tu"));
        assert!(rows[0].ends_with(b"@example.invalid\t\\N"));
        assert_eq!(rows[1], b"2\t\\N\t\\N", "NULL stays NULL");
        assert!(!out.windows(5).any(|w| w == b"kunde"));
    }

    #[test]
    fn any_split_of_the_text_gives_the_same_rows() {
        let text = b"1\tanna@kunde.de\tnotiz\n22\tbob@kunde.de\t\\N\n333\tc\\nd@e.f\tx\n";
        let whole = masked_whole(text);
        for cut in 0..text.len() {
            let (mut out, mut m) = (Vec::new(), masker());
            m.push(&text[..cut], &mut out).unwrap();
            m.push(&text[cut..], &mut out).unwrap();
            m.finish().unwrap();
            assert_eq!(out, whole, "cut at {cut}");
        }
    }

    #[test]
    fn rows_with_the_wrong_field_count_or_no_newline_are_refused() {
        let mut m = masker();
        assert!(m.push(b"1\ta\n", &mut Vec::new()).is_err());
        let mut m = masker();
        m.push(b"1\ta\tb", &mut Vec::new()).unwrap();
        assert!(m.finish().is_err());
    }
}
