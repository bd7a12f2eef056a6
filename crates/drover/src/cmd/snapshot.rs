//! Reading the cluster for the read verbs: [`read`] fills a [`ClusterView`] from one listing of
//! the whole prefix at one revision; [`list_valid`] lists one kind the view does not hold.

use drover_api::keys::Keys;
pub use drover_api::view::{ClusterView, InstanceView, InvalidEntry, InvalidKind, NodeView};
use drover_store::Store;

use super::store_error;
use crate::exit::CliResult;

/// Every value under `prefix` that decodes; the keys whose values do not are added to
/// `invalid` as `kind` (so one foreign value never breaks a read verb). `what` names the
/// listing in errors.
pub async fn list_valid<T: serde::de::DeserializeOwned>(
    store: &Store,
    prefix: &str,
    what: &str,
    kind: InvalidKind,
    invalid: &mut Vec<InvalidEntry>,
) -> CliResult<Vec<drover_store::Versioned<T>>> {
    let checked = store
        .list_checked::<T>(prefix)
        .await
        .map_err(|error| store_error(&format!("listing {what}"), error))?;
    invalid.extend(checked.invalid.into_iter().map(|bad| InvalidEntry {
        kind,
        key: bad.key,
        error: bad.error,
    }));
    Ok(checked.items)
}

/// The cluster at one revision: one listing of the whole prefix, each value through the one
/// decoder. A value that does not decode is an Invalid entry, never an error.
pub async fn read(store: &Store, keys: &Keys) -> CliResult<ClusterView> {
    let listing = store
        .list_raw(&keys.all())
        .await
        .map_err(|error| store_error("listing the cluster", error))?;
    let mut view = ClusterView::default();
    for item in listing.items {
        let value = serde_json::from_slice(&item.value).map_err(|error| error.to_string());
        view.apply(keys, &item.key, value, item.mod_revision);
    }
    view.revision = listing.revision;
    view.settle(keys);
    Ok(view)
}
