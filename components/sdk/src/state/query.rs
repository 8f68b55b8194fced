//! The state query API (`QueriableStateStore.Query`, the runtime API's
//! `QueryStateAlpha1`): the parsed [`QueryRequest`] a store receives, the
//! [`QueryResponse`] it answers, and helpers for stores that evaluate queries
//! themselves ([`Filter::matches`], [`QueryRequest::compare`],
//! [`Pagination::offset`] / [`Pagination::next_token`]).
//!
//! # What the host sends
//!
//! An app posts a query document to the host:
//!
//! ```json
//! {
//!   "filter": {"AND": [{"EQ": {"person.org": "Dev Ops"}}, {"IN": {"state": ["CA", "WA"]}}]},
//!   "sort": [{"key": "person.id", "order": "DESC"}],
//!   "page": {"limit": 10, "token": "20"}
//! }
//! ```
//!
//! The host forwards it in Dapr's component form (one `google.protobuf.Any`
//! per top-level filter operator, holding the operand's JSON), and the SDK
//! parses it back into a [`Filter`] tree with the rules of Dapr's
//! `components-contrib` (`state/query`): exactly one operator per filter
//! object; `EQ`, `NEQ`, `GT`, `GTE`, `LT`, `LTE` take one `{key: value}` pair,
//! `IN` one `{key: [values]}` pair, `AND` and `OR` an array of at least two
//! filters. Anything else is refused with `INVALID_ARGUMENT` before the store
//! is called. A key is a dotted path into the stored JSON value
//! (`person.org` is `value["person"]["org"]`).
//!
//! # Evaluating a query in the store
//!
//! Stores with a native query language translate the [`Filter`] tree. Stores
//! that hold JSON documents in memory (or can scan them) can use the helpers:
//!
//! ```
//! use plugd_component_sdk::state::query::{Filter, Pagination, QueryRequest, Value, json};
//!
//! let request = QueryRequest {
//!     filter: Some(Filter::Gte { key: "person.id".into(), value: json!(1000) }),
//!     sort: vec![plugd_component_sdk::state::query::Sorting::desc("person.id")],
//!     page: Pagination { limit: Some(1), token: None },
//!     ..QueryRequest::default()
//! };
//! let mut rows: Vec<(String, Value)> = vec![
//!     ("a".into(), json!({"person": {"id": 1036}})),
//!     ("b".into(), json!({"person": {"id": 1100}})),
//!     ("c".into(), json!({"person": {"id": 7}})),
//! ];
//! rows.retain(|(_, doc)| request.filter.as_ref().is_none_or(|f| f.matches(doc)));
//! rows.sort_by(|(ka, a), (kb, b)| request.compare(a, b).then_with(|| ka.cmp(kb)));
//! let offset = request.page.offset()?;
//! let total = rows.len();
//! let page: Vec<_> = rows.into_iter().skip(offset).take(request.page.limit.unwrap_or(usize::MAX)).collect();
//! assert_eq!(page[0].0, "b");
//! assert_eq!(request.page.next_token(offset, page.len(), total).as_deref(), Some("1"));
//! # Ok::<(), plugd_component_sdk::state::StateError>(())
//! ```

use std::cmp::Ordering;

use plugd_proto::components as pb;

use super::{Metadata, StateError};

pub use serde_json::{Value, json};

/// A parsed query filter (Dapr's `state/query` filter tree).
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// `{"EQ": {key: value}}`: the field equals `value`.
    Eq {
        /// Dotted path into the stored value.
        key: String,
        /// The value compared with.
        value: Value,
    },
    /// `{"NEQ": {key: value}}`: the field is missing or differs from `value`.
    Neq {
        /// Dotted path into the stored value.
        key: String,
        /// The value compared with.
        value: Value,
    },
    /// `{"GT": {key: value}}`: the field is greater than `value`.
    Gt {
        /// Dotted path into the stored value.
        key: String,
        /// The value compared with.
        value: Value,
    },
    /// `{"GTE": {key: value}}`: the field is greater than or equal to `value`.
    Gte {
        /// Dotted path into the stored value.
        key: String,
        /// The value compared with.
        value: Value,
    },
    /// `{"LT": {key: value}}`: the field is less than `value`.
    Lt {
        /// Dotted path into the stored value.
        key: String,
        /// The value compared with.
        value: Value,
    },
    /// `{"LTE": {key: value}}`: the field is less than or equal to `value`.
    Lte {
        /// Dotted path into the stored value.
        key: String,
        /// The value compared with.
        value: Value,
    },
    /// `{"IN": {key: [values]}}`: the field equals one of `values`.
    In {
        /// Dotted path into the stored value.
        key: String,
        /// The values compared with.
        values: Vec<Value>,
    },
    /// `{"AND": [filters]}` (at least two): every filter matches.
    And(Vec<Filter>),
    /// `{"OR": [filters]}` (at least two): some filter matches.
    Or(Vec<Filter>),
}

/// Sort direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortOrder {
    /// Ascending (the default).
    #[default]
    Asc,
    /// Descending.
    Desc,
}

/// One sort key of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sorting {
    /// Dotted path into the stored value.
    pub key: String,
    /// Direction.
    pub order: SortOrder,
}

impl Sorting {
    /// Ascending on `key`.
    pub fn asc(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            order: SortOrder::Asc,
        }
    }

    /// Descending on `key`.
    pub fn desc(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            order: SortOrder::Desc,
        }
    }
}

/// The page asked for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pagination {
    /// At most this many items; `None` (0 on the wire) means no limit.
    pub limit: Option<usize>,
    /// The token a previous answer returned, to continue after it; `None`
    /// for the first page.
    pub token: Option<String>,
}

impl Pagination {
    /// The token read as an offset into the sorted results, the encoding
    /// [`next_token`](Self::next_token) produces (0 without a token). A token
    /// that is not a non-negative integer is [`StateError::InvalidArgument`].
    /// Stores with their own continuation tokens ignore this.
    pub fn offset(&self) -> Result<usize, StateError> {
        match self.token.as_deref().map(str::trim) {
            None | Some("") => Ok(0),
            Some(token) => token.parse().map_err(|_| {
                StateError::InvalidArgument(format!("invalid query pagination token {token:?}"))
            }),
        }
    }

    /// The token for the page after one that started at `offset`, held
    /// `returned` items and was cut from `total` results: `Some` only when a
    /// limit is set and results remain.
    pub fn next_token(&self, offset: usize, returned: usize, total: usize) -> Option<String> {
        let next = offset.saturating_add(returned);
        (self.limit.is_some() && next < total).then(|| next.to_string())
    }
}

/// A query, as a store receives it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QueryRequest {
    /// The filter; `None` matches every item.
    pub filter: Option<Filter>,
    /// Sort keys, most significant first.
    pub sort: Vec<Sorting>,
    /// The page asked for.
    pub page: Pagination,
    /// Request metadata.
    pub metadata: Metadata,
}

impl QueryRequest {
    /// Orders two documents by [`sort`](Self::sort) (equal when there are no
    /// sort keys). Per key, [`compare_fields`] decides, reversed for
    /// [`SortOrder::Desc`]. Break ties with the state key to keep pages
    /// stable.
    pub fn compare(&self, a: &Value, b: &Value) -> Ordering {
        self.sort
            .iter()
            .map(|sorting| {
                let ordering = compare_fields(field(a, &sorting.key), field(b, &sorting.key));
                match sorting.order {
                    SortOrder::Asc => ordering,
                    SortOrder::Desc => ordering.reverse(),
                }
            })
            .find(|ordering| ordering.is_ne())
            .unwrap_or(Ordering::Equal)
    }
}

/// One result of a query.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueryItem {
    /// The state key, as stored (the host strips its app prefix).
    pub key: String,
    /// The stored value.
    pub data: Vec<u8>,
    /// Its etag, if the store has etags.
    pub etag: Option<String>,
    /// An error for this item only.
    pub error: Option<String>,
    /// Content type of the value, if known.
    pub content_type: Option<String>,
}

/// A store's answer to a query.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueryResponse {
    /// The items of this page, in order.
    pub items: Vec<QueryItem>,
    /// Token for the next page; `None` when there is none.
    pub token: Option<String>,
    /// Response metadata.
    pub metadata: Metadata,
}

/// The field at the dotted `path` of `document` (`a.b` is
/// `document["a"]["b"]`); `None` when a step is missing or not an object.
pub fn field<'a>(document: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(document, |value, step| value.as_object()?.get(step))
}

/// JSON equality where numbers compare by value (`1` equals `1.0`).
pub fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y) == Ordering::Equal,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| values_equal(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(key, x)| y.get(key).is_some_and(|y| values_equal(x, y)))
        }
        _ => a == b,
    }
}

fn compare_numbers(x: &serde_json::Number, y: &serde_json::Number) -> Ordering {
    if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
        return x.cmp(&y);
    }
    if let (Some(x), Some(y)) = (x.as_u64(), y.as_u64()) {
        return x.cmp(&y);
    }
    let (x, y) = (
        x.as_f64().unwrap_or(f64::NAN),
        y.as_f64().unwrap_or(f64::NAN),
    );
    x.total_cmp(&y)
}

/// The order of two values for `GT`/`GTE`/`LT`/`LTE`: numbers by value,
/// strings by code point; `None` for anything else (such a filter does not
/// match).
pub fn compare_values(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => Some(compare_numbers(x, y)),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// A total order on (possibly missing) fields, for sorting: values of one
/// type in their natural order (numbers by value, strings by code point,
/// `false` before `true`), types ranked null < bool < number < string <
/// array < object, and a missing field after every value.
pub fn compare_fields(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    fn rank(value: &Value) -> u8 {
        match value {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Number(_) => 2,
            Value::String(_) => 3,
            Value::Array(_) => 4,
            Value::Object(_) => 5,
        }
    }
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(a), Some(b)) => match (a, b) {
            (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
            (Value::Array(x), Value::Array(y)) => x
                .iter()
                .zip(y)
                .map(|(x, y)| compare_fields(Some(x), Some(y)))
                .find(|ordering| ordering.is_ne())
                .unwrap_or_else(|| x.len().cmp(&y.len())),
            _ => compare_values(a, b).unwrap_or_else(|| rank(a).cmp(&rank(b))),
        },
    }
}

impl Filter {
    /// Whether `document` (a stored value parsed as JSON) passes the filter.
    /// A comparison on a missing field, or between values of different types,
    /// does not match (except `NEQ`, which then matches).
    pub fn matches(&self, document: &Value) -> bool {
        let compared = |key: &str, value: &Value, accept: fn(Ordering) -> bool| {
            field(document, key)
                .and_then(|found| compare_values(found, value))
                .is_some_and(accept)
        };
        match self {
            Self::Eq { key, value } => field(document, key).is_some_and(|f| values_equal(f, value)),
            Self::Neq { key, value } => {
                !field(document, key).is_some_and(|f| values_equal(f, value))
            }
            Self::Gt { key, value } => compared(key, value, Ordering::is_gt),
            Self::Gte { key, value } => compared(key, value, Ordering::is_ge),
            Self::Lt { key, value } => compared(key, value, Ordering::is_lt),
            Self::Lte { key, value } => compared(key, value, Ordering::is_le),
            Self::In { key, values } => field(document, key)
                .is_some_and(|found| values.iter().any(|value| values_equal(found, value))),
            Self::And(filters) => filters.iter().all(|filter| filter.matches(document)),
            Self::Or(filters) => filters.iter().any(|filter| filter.matches(document)),
        }
    }

    /// Parses one filter object (`{"EQ": {"k": 1}}`) as Dapr does.
    pub fn from_json(value: &Value) -> Result<Self, StateError> {
        let object = value
            .as_object()
            .ok_or_else(|| invalid("a filter must be a JSON object"))?;
        let mut entries = object.iter();
        match (entries.next(), entries.next()) {
            (Some((operator, operand)), None) => Self::parse(operator, operand),
            _ => Err(invalid("a filter must have exactly one operator")),
        }
    }

    fn parse(operator: &str, operand: &Value) -> Result<Self, StateError> {
        let pair = || -> Result<(String, Value), StateError> {
            let object = operand
                .as_object()
                .filter(|object| object.len() == 1)
                .ok_or_else(|| {
                    invalid(&format!(
                        "{operator} filter must contain a single key/value pair"
                    ))
                })?;
            let (key, value) = object
                .iter()
                .next()
                .ok_or_else(|| invalid("empty filter"))?;
            Ok((key.clone(), value.clone()))
        };
        let list = || -> Result<Vec<Self>, StateError> {
            let items = operand
                .as_array()
                .ok_or_else(|| invalid(&format!("{operator} filter must be an array")))?;
            if items.len() < 2 {
                return Err(invalid(&format!(
                    "{operator} filter must contain at least two entries"
                )));
            }
            items.iter().map(Self::from_json).collect()
        };
        Ok(match operator {
            "EQ" => pair().map(|(key, value)| Self::Eq { key, value })?,
            "NEQ" => pair().map(|(key, value)| Self::Neq { key, value })?,
            "GT" => pair().map(|(key, value)| Self::Gt { key, value })?,
            "GTE" => pair().map(|(key, value)| Self::Gte { key, value })?,
            "LT" => pair().map(|(key, value)| Self::Lt { key, value })?,
            "LTE" => pair().map(|(key, value)| Self::Lte { key, value })?,
            "IN" => {
                let (key, values) = pair()?;
                match values {
                    Value::Array(values) => Self::In { key, values },
                    _ => return Err(invalid("IN filter value must be an array")),
                }
            }
            "AND" => Self::And(list()?),
            "OR" => Self::Or(list()?),
            other => return Err(invalid(&format!("unsupported filter {other:?}"))),
        })
    }
}

fn invalid(message: &str) -> StateError {
    StateError::InvalidArgument(format!("invalid query: {message}"))
}

// ---- wire conversions ----

impl TryFrom<pb::QueryRequest> for QueryRequest {
    type Error = StateError;

    fn try_from(req: pb::QueryRequest) -> Result<Self, StateError> {
        let query = req.query.unwrap_or_default();
        let filter = match query.filter.len() {
            0 => None,
            1 => {
                let mut filter = query.filter.into_iter();
                let (operator, operand) = filter.next().ok_or_else(|| invalid("empty filter"))?;
                let operand: Value = serde_json::from_slice(&operand.value).map_err(|err| {
                    invalid(&format!("the {operator} operand is not JSON: {err}"))
                })?;
                Some(Filter::parse(&operator, &operand)?)
            }
            _ => return Err(invalid("a filter must have exactly one operator")),
        };
        let sort = query
            .sort
            .into_iter()
            .map(|sorting| Sorting {
                order: match sorting.order() {
                    pb::sorting::Order::Asc => SortOrder::Asc,
                    pb::sorting::Order::Desc => SortOrder::Desc,
                },
                key: sorting.key,
            })
            .collect();
        let page = match query.pagination {
            None => Pagination::default(),
            Some(page) => Pagination {
                limit: match page.limit {
                    0 => None,
                    limit => Some(usize::try_from(limit).map_err(|_| {
                        invalid(&format!("the page limit must not be negative, not {limit}"))
                    })?),
                },
                token: (!page.token.is_empty()).then_some(page.token),
            },
        };
        Ok(Self {
            filter,
            sort,
            page,
            metadata: req.metadata,
        })
    }
}

impl From<QueryResponse> for pb::QueryResponse {
    fn from(resp: QueryResponse) -> Self {
        Self {
            items: resp
                .items
                .into_iter()
                .map(|item| pb::QueryItem {
                    key: item.key,
                    data: item.data,
                    etag: item.etag.map(|value| pb::Etag { value }),
                    error: item.error.unwrap_or_default(),
                    content_type: item.content_type.unwrap_or_default(),
                })
                .collect(),
            token: resp.token.unwrap_or_default(),
            metadata: resp.metadata,
        }
    }
}

impl QueryRequest {
    /// Parses a query document as an app posts it to the runtime API
    /// (`{"filter": …, "sort": […], "page": {…}}`), with the same rules as
    /// the wire form. Handy to test a store's query without a host.
    pub fn from_document(document: &Value) -> Result<Self, StateError> {
        Self::try_from(wire_request(document, Metadata::new())?)
    }
}

/// The component-protocol form of a query document, as the host sends it:
/// one `Any` (empty type URL, the operand's JSON) per top-level filter
/// operator, sort keys, pagination. For driving a store over gRPC in tests.
pub fn wire_request(document: &Value, metadata: Metadata) -> Result<pb::QueryRequest, StateError> {
    let object = document
        .as_object()
        .ok_or_else(|| invalid("the query must be a JSON object"))?;
    let mut query = pb::Query::default();
    if let Some(filter) = object.get("filter") {
        let filter = filter
            .as_object()
            .ok_or_else(|| invalid("\"filter\" must be an object"))?;
        for (operator, operand) in filter {
            let value = serde_json::to_vec(operand).map_err(|err| invalid(&err.to_string()))?;
            query.filter.insert(
                operator.clone(),
                prost_types::Any {
                    type_url: String::new(),
                    value,
                },
            );
        }
    }
    if let Some(sort) = object.get("sort") {
        let sort = sort
            .as_array()
            .ok_or_else(|| invalid("\"sort\" must be an array"))?;
        for sorting in sort {
            let key = sorting
                .get("key")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("each sort entry needs a \"key\""))?;
            let order = match sorting.get("order").and_then(Value::as_str) {
                Some(order) if order.eq_ignore_ascii_case("DESC") => pb::sorting::Order::Desc,
                _ => pb::sorting::Order::Asc,
            };
            query.sort.push(pb::Sorting {
                key: key.to_owned(),
                order: order.into(),
            });
        }
    }
    if let Some(page) = object.get("page") {
        query.pagination = Some(pb::Pagination {
            limit: page.get("limit").and_then(Value::as_i64).unwrap_or(0),
            token: page
                .get("token")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        });
    }
    Ok(pb::QueryRequest {
        query: Some(query),
        metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(document: Value) -> Result<QueryRequest, StateError> {
        QueryRequest::from_document(&document)
    }

    fn filter(document: Value) -> Filter {
        parse(json!({ "filter": document }))
            .expect("valid query")
            .filter
            .expect("a filter")
    }

    #[test]
    fn filters_parse_as_dapr_parses_them() {
        assert_eq!(
            filter(json!({"EQ": {"a.b": "x"}})),
            Filter::Eq {
                key: "a.b".into(),
                value: json!("x")
            }
        );
        assert_eq!(
            filter(
                json!({"OR": [{"IN": {"s": ["CA", "WA"]}}, {"AND": [{"GT": {"n": 1}}, {"LTE": {"n": 5}}]}]})
            ),
            Filter::Or(vec![
                Filter::In {
                    key: "s".into(),
                    values: vec![json!("CA"), json!("WA")]
                },
                Filter::And(vec![
                    Filter::Gt {
                        key: "n".into(),
                        value: json!(1)
                    },
                    Filter::Lte {
                        key: "n".into(),
                        value: json!(5)
                    },
                ]),
            ])
        );
        let no_filter = parse(json!({"page": {"limit": 2, "token": "4"}, "sort": [{"key": "k", "order": "DESC"}, {"key": "j"}]}))
            .expect("query");
        assert_eq!(no_filter.filter, None);
        assert_eq!(no_filter.sort, [Sorting::desc("k"), Sorting::asc("j")]);
        assert_eq!(
            no_filter.page,
            Pagination {
                limit: Some(2),
                token: Some("4".into())
            }
        );
    }

    #[test]
    fn malformed_filters_are_invalid_arguments() {
        for bad in [
            json!({"EQ": {"a": 1}, "NEQ": {"b": 2}}),
            json!({"EQ": {"a": 1, "b": 2}}),
            json!({"EQ": [1]}),
            json!({"IN": {"a": 1}}),
            json!({"AND": [{"EQ": {"a": 1}}]}),
            json!({"OR": {"EQ": {"a": 1}}}),
            json!({"LIKE": {"a": "x%"}}),
            json!({"AND": [{"EQ": {"a": 1}}, {"NOPE": {"a": 1}}]}),
            json!("EQ"),
        ] {
            let result = parse(json!({ "filter": bad }));
            assert!(
                matches!(result, Err(StateError::InvalidArgument(_))),
                "{bad} accepted: {result:?}"
            );
        }
        assert!(matches!(
            parse(json!({"page": {"limit": -1}})),
            Err(StateError::InvalidArgument(_))
        ));
        let not_json = pb::QueryRequest {
            query: Some(pb::Query {
                filter: HashMap::from([(
                    "EQ".to_owned(),
                    prost_types::Any {
                        type_url: String::new(),
                        value: b"{nope".to_vec(),
                    },
                )]),
                ..pb::Query::default()
            }),
            metadata: Metadata::new(),
        };
        assert!(matches!(
            QueryRequest::try_from(not_json),
            Err(StateError::InvalidArgument(_))
        ));
        assert_eq!(
            QueryRequest::try_from(pb::QueryRequest::default()).expect("empty query"),
            QueryRequest::default()
        );
    }

    #[test]
    fn filters_match_fields_by_dotted_path() {
        let doc = json!({"person": {"org": "Dev Ops", "id": 1036}, "state": "CA", "tags": ["a"], "ratio": 0.5});
        let yes = [
            json!({"EQ": {"person.org": "Dev Ops"}}),
            json!({"EQ": {"person.id": 1036.0}}),
            json!({"EQ": {"tags": ["a"]}}),
            json!({"NEQ": {"state": "WA"}}),
            json!({"NEQ": {"missing": 1}}),
            json!({"GT": {"person.id": 1000}}),
            json!({"GTE": {"person.id": 1036}}),
            json!({"LT": {"ratio": 1}}),
            json!({"LTE": {"state": "CA"}}),
            json!({"GT": {"state": "AZ"}}),
            json!({"IN": {"state": ["WA", "CA"]}}),
            json!({"AND": [{"EQ": {"state": "CA"}}, {"GT": {"person.id": 1}}]}),
            json!({"OR": [{"EQ": {"state": "WA"}}, {"EQ": {"person.org": "Dev Ops"}}]}),
        ];
        for query in yes {
            assert!(filter(query.clone()).matches(&doc), "{query} should match");
        }
        let no = [
            json!({"EQ": {"person.org": "dev ops"}}),
            json!({"EQ": {"person": "Dev Ops"}}),
            json!({"EQ": {"state.x": "CA"}}),
            json!({"NEQ": {"state": "CA"}}),
            json!({"GT": {"person.id": 1036}}),
            json!({"GT": {"state": 1}}),
            json!({"LT": {"missing": 1}}),
            json!({"IN": {"state": []}}),
            json!({"AND": [{"EQ": {"state": "CA"}}, {"GT": {"person.id": 2000}}]}),
            json!({"OR": [{"EQ": {"state": "WA"}}, {"EQ": {"person.org": "Sales"}}]}),
        ];
        for query in no {
            assert!(
                !filter(query.clone()).matches(&doc),
                "{query} should not match"
            );
        }
    }

    #[test]
    fn sorting_is_total_with_missing_fields_last() {
        let request =
            parse(json!({"sort": [{"key": "n"}, {"key": "s", "order": "DESC"}]})).expect("query");
        let mut docs = vec![
            json!({"s": "z"}),
            json!({"n": 2, "s": "a"}),
            json!({"n": "text"}),
            json!({"n": 1.5}),
            json!({"n": 2, "s": "b"}),
            json!({"n": null}),
            json!({"n": true}),
        ];
        docs.sort_by(|a, b| request.compare(a, b));
        assert_eq!(
            docs,
            [
                json!({"n": null}),
                json!({"n": true}),
                json!({"n": 1.5}),
                json!({"n": 2, "s": "b"}),
                json!({"n": 2, "s": "a"}),
                json!({"n": "text"}),
                json!({"s": "z"}),
            ]
        );
    }

    #[test]
    fn offset_tokens() {
        let page = Pagination {
            limit: Some(2),
            token: None,
        };
        assert_eq!(page.offset().expect("no token"), 0);
        assert_eq!(page.next_token(0, 2, 5).as_deref(), Some("2"));
        assert_eq!(page.next_token(4, 1, 5), None);
        assert_eq!(Pagination::default().next_token(0, 5, 5), None);
        let bad = Pagination {
            limit: None,
            token: Some("abc".into()),
        };
        assert!(matches!(bad.offset(), Err(StateError::InvalidArgument(_))));
    }

    #[test]
    fn responses_convert_to_the_wire() {
        let wire = pb::QueryResponse::from(QueryResponse {
            items: vec![QueryItem {
                key: "k".into(),
                data: b"{}".to_vec(),
                etag: Some("1".into()),
                ..QueryItem::default()
            }],
            token: None,
            metadata: Metadata::new(),
        });
        assert_eq!(
            wire.items[0].etag.as_ref().map(|e| e.value.as_str()),
            Some("1")
        );
        assert_eq!(wire.items[0].error, "");
        assert_eq!(wire.token, "");
    }
}
