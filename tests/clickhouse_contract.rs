//! The ClickHouse insert contract: every struct a service INSERTs into ClickHouse matches its
//! table as the migrations leave it: the same column names, in the same order, with types that
//! RowBinary encodes alike.
//!
//! Why: the services write RowBinary without the clickhouse crate's validation (ClickHouse
//! 18.16 has no `RowBinaryWithNamesAndTypes` input to validate against), so nothing else
//! checks a struct against its table. An insert names its columns (from the struct), but
//! RowBinary carries no types: a field whose type no longer matches its column is read by
//! ClickHouse as the column's type (an `i64` into a `UInt64` column stores wrapped numbers; a
//! `u64` into a `DateTime` column shifts every later field). And the structs are kept in
//! column order, which the migrations' comments and readers of the code rely on.
//!
//! How the types are compared. Column names come from the crate's `Row::COLUMN_NAMES` (what the
//! INSERT statement lists). Field types are *derived*, not kept in a table here: a sample row of
//! each struct goes through a serde `Serializer` ([`TypeOf`]) that turns the calls serde makes
//! for each field into the ClickHouse type RowBinary writes that way (`u32` → `UInt32`,
//! `Option<u16>` → `Nullable(UInt16)`, a list of strings → `Array(String)`). Each column's type
//! from `system.columns` is brought to the same wire form ([`wire_type`]: `DateTime('UTC')` is
//! a `UInt32` on the wire, `Date` a `UInt16`, `LowCardinality(T)` a `T`). A hand-kept table
//! would have to be edited together with the struct and could agree with a wrong one; the
//! derived type changes when the field's type does, so renaming, reordering or retyping a field
//! (or changing a column) fails here. A sample must give every `Option` a `Some` and every list
//! an element, since `None` and `[]` say nothing about the inner type; samples that do not
//! are refused.
//!
//! Which structs: the test also reads the services' sources for `.insert::<Struct>("table")`
//! and fails if any pair is missing from [`contracts`] (a new insert without a contract, or a
//! table renamed in the code and not here). And it checks itself: copies of one struct with a
//! field renamed, two swapped, one widened, one of the other sign and one left out must each
//! fail the comparison.

mod common;

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use clickhouse::Row;
use common::*;
use meterline_aggregator::clickhouse_sink::{AccountRow, AssignmentRow, UsageRow};
use meterline_ingest::read::recorder::QuotaEventRow;
use meterline_notifier::notice_history::NoticeHistoryRow;
use meterline_scorer::crossings::CrossingRow;
use meterline_scorer::store::HistoryRow;
use serde::ser;
use serde::{Serialize, Serializer};

/// One insert struct: its table, its name as the code spells it, the columns its INSERT lists,
/// and per serialized field its name and wire type.
struct Contract {
    table: &'static str,
    name: &'static str,
    columns: &'static [&'static str],
    fields: Result<Vec<(String, String)>, Unsupported>,
}

fn contract<R: Row + Serialize>(table: &'static str, name: &'static str, sample: &R) -> Contract {
    Contract {
        table,
        name,
        columns: R::COLUMN_NAMES,
        fields: sample.serialize(Fields),
    }
}

/// Every insert struct with a sample row: every `Option` is `Some`, every list has an element.
fn contracts() -> Vec<Contract> {
    let plugins = ["guardrails".to_owned()];
    let tags = vec!["enterprise".to_owned()];
    vec![
        contract(
            "usage_events",
            "UsageRow",
            &UsageRow {
                event_id: "e",
                occurred_at: 1,
                received_at: 2,
                account_id: "a",
                api_key_id: "k",
                gateway_id: "g",
                region: "r",
                cloud: "c",
                provider: "p",
                model: "m",
                input_tokens: 3,
                output_tokens: 4,
                cost_micros: 5,
                latency_ms: Some(6),
                status: Some(200),
                session_id: "s",
                user_id: "u",
                plugins: &plugins,
                pii_detected: 1,
                client_ip_hash: "h",
                device_id: "d",
                prompt_hash: "ph",
                kafka_partition: 7,
                kafka_offset: 8,
                kafka_topic: "t",
            },
        ),
        contract(
            "account_events",
            "AccountRow",
            &AccountRow {
                event_id: "e",
                occurred_at: 1,
                received_at: 2,
                account_id: "a",
                kind: "signup",
                plan: "free",
                seats: Some(3),
                email_domain: "example.com",
                company_size: Some(500),
                signup_ip_hash: "h",
                device_id: "d",
                browser_signature: "b",
                notice_id: "n",
                actor: "ana",
                reason: "r",
                abuse_score: Some(70),
                kafka_partition: 4,
                kafka_offset: 5,
                kafka_topic: "t",
            },
        ),
        contract(
            "experiment_assignments",
            "AssignmentRow",
            &AssignmentRow {
                event_id: "e",
                assigned_at: 1,
                experiment: "x",
                variant: "v",
                is_control: 1,
                account_id: "a",
                signed_up_at: 2,
                plan: "free",
                overrides: "{}",
            },
        ),
        contract(
            "account_scores",
            "HistoryRow",
            &HistoryRow {
                account_id: "a".into(),
                scored_at: 1,
                plan: "free".into(),
                deal_readiness: 2,
                pql: 3,
                abuse: 4,
                abuse_suspected: 0,
                power_user: 1,
                tags,
                reasons: "{}".into(),
            },
        ),
        contract(
            "limit_stage_crossings",
            "CrossingRow",
            &CrossingRow {
                event_id: "e".into(),
                occurred_at: 1,
                observed_at: 2,
                account_id: "a",
                plan: "free",
                limit_name: "day_requests",
                window_id: "20261122",
                stage: 85,
                kind: "approached",
                used: 85.0,
                limit_value: 100.0,
            },
        ),
        contract(
            "quota_events",
            "QuotaEventRow",
            &QuotaEventRow {
                event_id: "e".into(),
                occurred_at: 1,
                account_id: "a".into(),
                event_type: "limit_reached".into(),
                plan: "free".into(),
                limit_name: "day_requests".into(),
                stage: 100,
                window_id: "20261122".into(),
                used: 100.0,
                limit_value: 100.0,
                requested_model: "m".into(),
                served_model: "m".into(),
            },
        ),
        contract(
            "notice_history",
            "NoticeHistoryRow",
            &NoticeHistoryRow {
                notice_id: "n".into(),
                account_id: "a".into(),
                kind: "power_user".into(),
                created_at: 1,
            },
        ),
    ]
}

#[tokio::test]
async fn every_insert_struct_matches_its_table_after_the_migrations() {
    let c = isolated_config(&unique_suffix());
    meterline::migrate::clickhouse(&c)
        .await
        .expect("ClickHouse migrations");
    let tables = Tables::new(c.clickhouse.client(), &c.clickhouse.database).await;

    let mut problems = Vec::new();
    for k in contracts() {
        let table = tables.insertable(k.table).await;
        problems.extend(mismatch(&k, &table));
    }

    // And the comparison does catch what it is for, on copies of AssignmentRow.
    let table = tables.insertable("experiment_assignments").await;
    let same = contract(
        "experiment_assignments",
        "Copy",
        &assignment::Same::default(),
    );
    assert_eq!(mismatch(&same, &table), None);
    for broken in [
        contract(
            "experiment_assignments",
            "Renamed",
            &assignment::Renamed::default(),
        ),
        contract(
            "experiment_assignments",
            "Reordered",
            &assignment::Reordered::default(),
        ),
        contract(
            "experiment_assignments",
            "Widened",
            &assignment::Widened::default(),
        ),
        contract(
            "experiment_assignments",
            "Signed",
            &assignment::Signed::default(),
        ),
        contract(
            "experiment_assignments",
            "Short",
            &assignment::Short::default(),
        ),
    ] {
        assert!(
            mismatch(&broken, &table).is_some(),
            "{} passed",
            broken.name
        );
    }

    tables.drop_database().await;
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// The columns of the tables in one database, from `system.columns`.
struct Tables {
    ch: clickhouse::Client,
    database: String,
    sql: String,
}

impl Tables {
    async fn new(ch: clickhouse::Client, database: &str) -> Self {
        // `position` (24.x) orders the columns; 18.16 has no such column and lists them in order.
        let has_position: u64 = ch
            .query("SELECT count() FROM system.columns WHERE database = 'system' AND table = 'columns' AND name = 'position'")
            .fetch_one()
            .await
            .unwrap();
        let order = if has_position > 0 {
            " ORDER BY position"
        } else {
            ""
        };
        Tables {
            ch,
            database: database.to_owned(),
            sql: format!(
                "SELECT name, type, default_kind FROM system.columns WHERE database = ? AND table = ?{order}"
            ),
        }
    }

    /// The columns an INSERT can write (not computed ones), in order, with their wire types.
    async fn insertable(&self, table: &str) -> Vec<(String, String)> {
        let columns: Vec<(String, String, String)> = self
            .ch
            .query(&self.sql)
            .bind(&self.database)
            .bind(table)
            .fetch_all()
            .await
            .unwrap();
        assert!(!columns.is_empty(), "no table {table} after the migrations");
        columns
            .into_iter()
            .filter(|(_, _, kind)| !matches!(kind.as_str(), "MATERIALIZED" | "ALIAS" | "EPHEMERAL"))
            .map(|(name, ty, _)| (name, wire_type(&ty)))
            .collect()
    }

    async fn drop_database(&self) {
        let _ = self
            .ch
            .query(&format!("DROP DATABASE IF EXISTS {}", self.database))
            .execute()
            .await;
    }
}

/// What is wrong between a struct and its table's insertable columns, if anything.
fn mismatch(k: &Contract, table: &[(String, String)]) -> Option<String> {
    let fields = match &k.fields {
        Ok(f) => f,
        Err(e) => return Some(format!("{} (sample row): {e}", k.name)),
    };
    let named: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
    if named != k.columns {
        return Some(format!(
            "{}: serializes fields {named:?} but its INSERT lists {:?}",
            k.name, k.columns
        ));
    }
    (fields != table).then(|| {
        format!(
            "{} does not match table {}:\n  struct: {}\n  table:  {}",
            k.name,
            k.table,
            show(fields),
            show(table)
        )
    })
}

/// Copies of `AssignmentRow`: one the same, the others each with one thing the test must catch.
mod assignment {
    use clickhouse::Row;
    use serde::Serialize;

    #[derive(Default, Row, Serialize)]
    pub struct Same {
        event_id: String,
        assigned_at: u32,
        experiment: String,
        variant: String,
        is_control: u8,
        account_id: String,
        signed_up_at: u32,
        plan: String,
        overrides: String,
    }

    #[derive(Default, Row, Serialize)]
    pub struct Renamed {
        event_id: String,
        assigned_at: u32,
        experiment: String,
        variant_name: String,
        is_control: u8,
        account_id: String,
        signed_up_at: u32,
        plan: String,
        overrides: String,
    }

    #[derive(Default, Row, Serialize)]
    pub struct Reordered {
        event_id: String,
        assigned_at: u32,
        variant: String,
        experiment: String,
        is_control: u8,
        account_id: String,
        signed_up_at: u32,
        plan: String,
        overrides: String,
    }

    /// A `u64` for a `DateTime`: eight bytes where ClickHouse reads four.
    #[derive(Default, Row, Serialize)]
    pub struct Widened {
        event_id: String,
        assigned_at: u64,
        experiment: String,
        variant: String,
        is_control: u8,
        account_id: String,
        signed_up_at: u32,
        plan: String,
        overrides: String,
    }

    /// An `i8` for a `UInt8`: the same byte, read differently.
    #[derive(Default, Row, Serialize)]
    pub struct Signed {
        event_id: String,
        assigned_at: u32,
        experiment: String,
        variant: String,
        is_control: i8,
        account_id: String,
        signed_up_at: u32,
        plan: String,
        overrides: String,
    }

    /// A column left out.
    #[derive(Default, Row, Serialize)]
    pub struct Short {
        event_id: String,
        assigned_at: u32,
        experiment: String,
        variant: String,
        is_control: u8,
        account_id: String,
        signed_up_at: u32,
        plan: String,
    }
}

/// The contracts cover exactly the inserts the services make.
#[test]
fn every_insert_in_the_services_has_a_contract() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = BTreeSet::new();
    for dir in [
        "src",
        "ingest/src",
        "aggregator/src",
        "scorer/src",
        "notifier/src",
    ] {
        inserts_in(&root.join(dir), &mut found);
    }
    let covered: BTreeSet<(String, String)> = contracts()
        .iter()
        .map(|k| (k.name.to_owned(), k.table.to_owned()))
        .collect();
    assert_eq!(found, covered, "(struct, table) of each `.insert::<…>(…)`");
}

/// Collects `(struct, table)` from `.insert::<Struct…>("table")` in the `.rs` files under `dir`.
fn inserts_in(dir: &Path, out: &mut BTreeSet<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            inserts_in(&path, out);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (i, _) in text.match_indices(".insert::<") {
            let rest = &text[i + ".insert::<".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let table = rest
                .find(">(\"")
                .map(|j| &rest[j + 3..])
                .and_then(|t| t.split_once('"'))
                .map(|(t, _)| t.to_owned())
                .unwrap_or_else(|| {
                    panic!(
                        "{}: `.insert::<{name}>` without a literal table name",
                        path.display()
                    )
                });
            out.insert((name, table));
        }
    }
}

fn show(columns: &[(String, String)]) -> String {
    columns
        .iter()
        .map(|(n, t)| format!("{n} {t}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A column type as RowBinary encodes it.
fn wire_type(t: &str) -> String {
    let inner = |prefix: &str| {
        t.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix(')'))
            .map(str::to_owned)
    };
    if let Some(i) = inner("LowCardinality(") {
        return wire_type(&i);
    }
    if let Some(i) = inner("Nullable(") {
        return format!("Nullable({})", wire_type(&i));
    }
    if let Some(i) = inner("Array(") {
        return format!("Array({})", wire_type(&i));
    }
    match t {
        "Date" => "UInt16".into(),
        "Bool" => "UInt8".into(),
        t if t == "DateTime" || t.starts_with("DateTime(") => "UInt32".into(),
        t => t.into(),
    }
}

#[test]
fn wire_types_are_what_rowbinary_writes() {
    assert_eq!(wire_type("DateTime('UTC')"), "UInt32");
    assert_eq!(wire_type("DateTime"), "UInt32");
    assert_eq!(wire_type("Nullable(UInt16)"), "Nullable(UInt16)");
    assert_eq!(wire_type("Array(LowCardinality(String))"), "Array(String)");
    assert_eq!(wire_type("DateTime64(3)"), "DateTime64(3)");
    #[derive(Serialize)]
    struct S<'a> {
        a: u32,
        b: Option<i64>,
        c: &'a [String],
        d: f64,
        e: Option<u8>,
    }
    let list = ["x".to_owned()];
    let fields = S {
        a: 1,
        b: Some(2),
        c: &list,
        d: 0.5,
        e: None,
    }
    .serialize(Fields);
    assert_eq!(
        fields.unwrap_err().to_string(),
        "e: None says nothing of the inner type: give the sample a Some"
    );
    let fields = S {
        a: 1,
        b: Some(2),
        c: &list,
        d: 0.5,
        e: Some(3),
    }
    .serialize(Fields)
    .unwrap();
    assert_eq!(
        show(&fields),
        "a UInt32, b Nullable(Int64), c Array(String), d Float64, e Nullable(UInt8)"
    );
}

/// A value the sample cannot type, with the field it is in.
#[derive(Debug)]
struct Unsupported(String);

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unsupported {}

impl ser::Error for Unsupported {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Unsupported(msg.to_string())
    }
}

fn unsupported<T>(what: &str) -> Result<T, Unsupported> {
    Err(Unsupported(what.to_owned()))
}

/// Serializes a row struct into its fields: (name, wire type of the value).
struct Fields;

struct FieldList(Vec<(String, String)>);

impl ser::SerializeStruct for FieldList {
    type Ok = Vec<(String, String)>;
    type Error = Unsupported;

    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        let ty = value
            .serialize(TypeOf)
            .map_err(|e| Unsupported(format!("{key}: {e}")))?;
        self.0.push((key.to_owned(), ty));
        Ok(())
    }

    fn end(self) -> Result<Self::Ok, Unsupported> {
        Ok(self.0)
    }
}

/// The ClickHouse type RowBinary writes a value as, from the serde calls the value makes.
struct TypeOf;

/// The elements of a list (all of one type) or a tuple.
struct Elements {
    tuple: bool,
    types: Vec<String>,
}

impl Elements {
    fn push<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Unsupported> {
        self.types.push(value.serialize(TypeOf)?);
        Ok(())
    }

    fn finish(self) -> Result<String, Unsupported> {
        if self.tuple {
            return Ok(format!("Tuple({})", self.types.join(", ")));
        }
        let Some(first) = self.types.first() else {
            return unsupported(
                "an empty list says nothing of its element type: give the sample an element",
            );
        };
        if self.types.iter().any(|t| t != first) {
            return unsupported("a list of mixed types");
        }
        Ok(format!("Array({first})"))
    }
}

impl ser::SerializeSeq for Elements {
    type Ok = String;
    type Error = Unsupported;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, v: &T) -> Result<(), Unsupported> {
        self.push(v)
    }
    fn end(self) -> Result<String, Unsupported> {
        self.finish()
    }
}

impl ser::SerializeTuple for Elements {
    type Ok = String;
    type Error = Unsupported;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, v: &T) -> Result<(), Unsupported> {
        self.push(v)
    }
    fn end(self) -> Result<String, Unsupported> {
        self.finish()
    }
}

macro_rules! scalar {
    ($($method:ident($ty:ty) => $ch:literal),*) => {
        $(fn $method(self, _: $ty) -> Result<String, Unsupported> {
            Ok($ch.into())
        })*
    };
}

impl Serializer for TypeOf {
    type Ok = String;
    type Error = Unsupported;
    type SerializeSeq = Elements;
    type SerializeTuple = Elements;
    type SerializeTupleStruct = ser::Impossible<String, Unsupported>;
    type SerializeTupleVariant = ser::Impossible<String, Unsupported>;
    type SerializeMap = ser::Impossible<String, Unsupported>;
    type SerializeStruct = ser::Impossible<String, Unsupported>;
    type SerializeStructVariant = ser::Impossible<String, Unsupported>;

    scalar!(
        serialize_bool(bool) => "UInt8",
        serialize_i8(i8) => "Int8",
        serialize_i16(i16) => "Int16",
        serialize_i32(i32) => "Int32",
        serialize_i64(i64) => "Int64",
        serialize_i128(i128) => "Int128",
        serialize_u8(u8) => "UInt8",
        serialize_u16(u16) => "UInt16",
        serialize_u32(u32) => "UInt32",
        serialize_u64(u64) => "UInt64",
        serialize_u128(u128) => "UInt128",
        serialize_f32(f32) => "Float32",
        serialize_f64(f64) => "Float64",
        serialize_str(&str) => "String",
        serialize_bytes(&[u8]) => "String"
    );

    fn serialize_char(self, _: char) -> Result<String, Unsupported> {
        unsupported("a char has no RowBinary form")
    }
    fn serialize_none(self) -> Result<String, Unsupported> {
        unsupported("None says nothing of the inner type: give the sample a Some")
    }
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<String, Unsupported> {
        Ok(format!("Nullable({})", value.serialize(TypeOf)?))
    }
    fn serialize_unit(self) -> Result<String, Unsupported> {
        unsupported("a unit value")
    }
    fn serialize_unit_struct(self, name: &'static str) -> Result<String, Unsupported> {
        unsupported(&format!("unit struct {name}"))
    }
    fn serialize_unit_variant(
        self,
        name: &'static str,
        _: u32,
        _: &'static str,
    ) -> Result<String, Unsupported> {
        unsupported(&format!("enum {name}: write its text or number"))
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<String, Unsupported> {
        value.serialize(TypeOf)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        name: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<String, Unsupported> {
        unsupported(&format!("enum {name}: write its text or number"))
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Elements, Unsupported> {
        Ok(Elements {
            tuple: false,
            types: Vec::new(),
        })
    }
    fn serialize_tuple(self, _: usize) -> Result<Elements, Unsupported> {
        Ok(Elements {
            tuple: true,
            types: Vec::new(),
        })
    }
    fn serialize_tuple_struct(
        self,
        name: &'static str,
        _: usize,
    ) -> Result<ser::Impossible<String, Unsupported>, Unsupported> {
        unsupported(&format!("tuple struct {name}"))
    }
    fn serialize_tuple_variant(
        self,
        name: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<ser::Impossible<String, Unsupported>, Unsupported> {
        unsupported(&format!("enum {name}"))
    }
    fn serialize_map(
        self,
        _: Option<usize>,
    ) -> Result<ser::Impossible<String, Unsupported>, Unsupported> {
        unsupported("a map (no Map columns on ClickHouse 18.16)")
    }
    fn serialize_struct(
        self,
        name: &'static str,
        _: usize,
    ) -> Result<ser::Impossible<String, Unsupported>, Unsupported> {
        unsupported(&format!("nested struct {name}"))
    }
    fn serialize_struct_variant(
        self,
        name: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<ser::Impossible<String, Unsupported>, Unsupported> {
        unsupported(&format!("enum {name}"))
    }
}

/// A row is a struct; anything else is not a row.
impl Serializer for Fields {
    type Ok = Vec<(String, String)>;
    type Error = Unsupported;
    type SerializeSeq = ser::Impossible<Self::Ok, Unsupported>;
    type SerializeTuple = ser::Impossible<Self::Ok, Unsupported>;
    type SerializeTupleStruct = ser::Impossible<Self::Ok, Unsupported>;
    type SerializeTupleVariant = ser::Impossible<Self::Ok, Unsupported>;
    type SerializeMap = ser::Impossible<Self::Ok, Unsupported>;
    type SerializeStruct = FieldList;
    type SerializeStructVariant = ser::Impossible<Self::Ok, Unsupported>;

    fn serialize_struct(self, _: &'static str, len: usize) -> Result<FieldList, Unsupported> {
        Ok(FieldList(Vec::with_capacity(len)))
    }

    fn serialize_bool(self, _: bool) -> Result<Self::Ok, Unsupported> {
        unsupported("a row must be a struct")
    }
    fn serialize_i8(self, _: i8) -> Result<Self::Ok, Unsupported> {
        unsupported("a row must be a struct")
    }
    fn serialize_i16(self, _: i16) -> Result<Self::Ok, Unsupported> {
        unsupported("a row must be a struct")
    }
    fn serialize_i32(self, _: i32) -> Result<Self::Ok, Unsupported> {
        unsupported("a row must be a struct")
    }
    fn serialize_i64(self, _: i64) -> Result<Self::Ok, Unsupported> {
        unsupported("a row must be a struct")
    }
    fn serialize_u8(self, _: u8) -> Result<Self::Ok, Unsupported> {
        unsupported("a row must be a struct")
    }
    fn serialize_u16(self, _: u16) -> Result<Self::Ok, Unsupported> {
        unsupported("a row must be a struct")
    }
    fn serialize_u32(self, _: u32) -> Result<Self::Ok, Unsupported> {
        unsupported("a row must be a struct")
    }
    fn serialize_u64(self, _: u64) -> Result<Self::Ok, Unsupported> {
        unsupported("a row must be a struct")
    }
    fn serialize_f32(self, _: f32) -> Result<Self::Ok, Unsupported> {
        unsupported("a row must be a struct")
    }
    fn serialize_f64(self, _: f64) -> Result<Self::Ok, Unsupported> {
        unsupported("a row must be a struct")
    }
    fn serialize_char(self, _: char) -> Result<Self::Ok, Unsupported> {
        unsupported("a row must be a struct")
    }
    fn serialize_str(self, _: &str) -> Result<Self::Ok, Unsupported> {
        unsupported("a row must be a struct")
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<Self::Ok, Unsupported> {
        unsupported("a row must be a struct")
    }
    fn serialize_none(self) -> Result<Self::Ok, Unsupported> {
        unsupported("a row must be a struct")
    }
    fn serialize_some<T: ?Sized + Serialize>(self, _: &T) -> Result<Self::Ok, Unsupported> {
        unsupported("a row must be a struct")
    }
    fn serialize_unit(self) -> Result<Self::Ok, Unsupported> {
        unsupported("a row must be a struct")
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<Self::Ok, Unsupported> {
        unsupported("a row must be a struct")
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
    ) -> Result<Self::Ok, Unsupported> {
        unsupported("a row must be a struct")
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<Self::Ok, Unsupported> {
        value.serialize(Fields)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<Self::Ok, Unsupported> {
        unsupported("a row must be a struct")
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Unsupported> {
        unsupported("a row must be a struct")
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Unsupported> {
        unsupported("a row must be a struct")
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Unsupported> {
        unsupported("a row must be a struct")
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Unsupported> {
        unsupported("a row must be a struct")
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Unsupported> {
        unsupported("a row must be a struct")
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Unsupported> {
        unsupported("a row must be a struct")
    }
}
