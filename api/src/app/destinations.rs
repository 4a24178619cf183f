//! Destinations (`/api/v1/destinations`, admin only): the user's backends that
//! standing collectors export to. A document is validated field by field
//! (`phoenix_wire::destination`) before anything is stored; credentials are
//! references only, so nothing secret is stored or returned.

use phoenix_storage::{PgConnection, destinations};
use phoenix_wire::destination::{Destination, DestinationDocument};
use phoenix_wire::names;
use phoenix_wire::problem::FieldError;

use crate::app::parse_body;
use crate::error::ApiError;
use crate::http::body::DocumentBody;

/// Creates or replaces a destination; true when it is new. The deployments that
/// export to it pick the change up on the reconciler's next pass.
pub async fn put(
    conn: &mut PgConnection,
    body: &DocumentBody,
) -> Result<(Destination, bool), ApiError> {
    let doc: DestinationDocument = parse_body(body)?;
    doc.validate().map_err(ApiError::Invalid)?;
    let created =
        destinations::upsert(conn, &doc.metadata.name, &doc.metadata.labels, &doc.spec).await?;
    Ok((destinations::get(conn, &doc.metadata.name).await?, created))
}

pub async fn get(conn: &mut PgConnection, name: &str) -> Result<Destination, ApiError> {
    check_name(name)?;
    Ok(destinations::get(conn, name).await?)
}

pub async fn delete(conn: &mut PgConnection, name: &str) -> Result<(), ApiError> {
    check_name(name)?;
    Ok(destinations::delete(conn, name).await?)
}

/// A name in the path that no destination can have is a 422 naming `name`.
fn check_name(name: &str) -> Result<(), ApiError> {
    names::check_resource_name(name).map_err(|m| {
        ApiError::Invalid(FieldError::new(
            "name",
            format!("invalid destination name: {m}"),
        ))
    })
}

/// Every destination a deployment names must exist (`spec.destinations[i]`).
pub(crate) async fn check_named(
    conn: &mut PgConnection,
    named: &[String],
) -> Result<std::collections::BTreeMap<String, phoenix_wire::destination::DestinationSpec>, ApiError>
{
    let all = destinations::specs(conn).await?;
    for (i, name) in named.iter().enumerate() {
        if !all.contains_key(name) {
            let known: Vec<&str> = all.keys().map(String::as_str).collect();
            return Err(ApiError::Invalid(FieldError::new(
                format!("spec.destinations[{i}]"),
                format!(
                    "no destination `{name}` is declared ({}); an admin declares them with `phoenix destination create`",
                    if known.is_empty() {
                        "there are none".to_string()
                    } else {
                        format!("declared: {}", known.join(", "))
                    }
                ),
            )));
        }
    }
    Ok(all)
}
