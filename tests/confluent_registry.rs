//! With `schema_registry.url` set, schema ids come from a Confluent-compatible Schema Registry.
//! A local stand-in asserts the documented requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use meterline_infra::registry::SchemaRegistry;
use meterline_infra::RegistryError;
use meterline_schemas::avro;
use serde_json::{json, Value};

#[derive(Default)]
struct Stand {
    schemas: Vec<String>,
    subjects: HashMap<String, Vec<i32>>,
}

type Shared = Arc<Mutex<Stand>>;

async fn register(
    State(s): State<Shared>,
    Path(subject): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Json<Value> {
    assert_eq!(
        headers["content-type"],
        "application/vnd.schemaregistry.v1+json"
    );
    let schema = body["schema"]
        .as_str()
        .expect("body is {\"schema\": \"...\"}")
        .to_owned();
    let mut s = s.lock().unwrap();
    let id = match s.schemas.iter().position(|x| *x == schema) {
        Some(i) => i as i32 + 1,
        None => {
            s.schemas.push(schema);
            s.schemas.len() as i32
        }
    };
    s.subjects.entry(subject).or_default().push(id);
    Json(json!({ "id": id }))
}

async fn by_id(State(s): State<Shared>, Path(id): Path<i32>) -> Result<Json<Value>, StatusCode> {
    let s = s.lock().unwrap();
    s.schemas
        .get((id - 1) as usize)
        .map(|schema| Json(json!({ "schema": schema })))
        .ok_or(StatusCode::NOT_FOUND)
}

#[tokio::test]
async fn ids_come_from_the_confluent_registry_when_configured() {
    let state: Shared = Default::default();
    let app = Router::new()
        .route("/subjects/{subject}/versions", post(register))
        .route("/schemas/ids/{id}", get(by_id))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let registry = SchemaRegistry::confluent(&format!("http://{addr}/"));
    let usage = registry
        .register("usage-events-value", avro::USAGE_EVENT_SCHEMA)
        .await
        .unwrap();
    let account = registry
        .register("account-events-value", avro::ACCOUNT_EVENT_SCHEMA)
        .await
        .unwrap();
    assert_ne!(usage, account);
    assert_eq!(
        registry
            .register("usage-events-value", avro::USAGE_EVENT_SCHEMA)
            .await
            .unwrap(),
        usage
    );
    assert_eq!(
        state.lock().unwrap().subjects["usage-events-value"],
        vec![usage, usage]
    );

    // A second client (the aggregator) with an empty cache fetches the writer schema by id.
    let reader = SchemaRegistry::confluent(&format!("http://{addr}"));
    let fetched = reader.fetch(account).await.unwrap();
    assert_eq!(
        *fetched,
        avro::parse_schema(avro::ACCOUNT_EVENT_SCHEMA).unwrap()
    );
    assert!(matches!(
        reader.fetch(99).await,
        Err(RegistryError::UnknownSchemaId(99))
    ));
}
