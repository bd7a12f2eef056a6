//! Conversions between etcd's key-values and typed, versioned values, and key-range helpers.

use etcd_client::{KeyValue, PutOptions, TxnOpResponse};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::lease::LeaseId;
use crate::store::Versioned;

/// The end of the key range holding every key that starts with `prefix`.
pub(crate) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Only 0xff bytes (or empty): everything from the key on.
    vec![0]
}

pub(crate) fn put_options(lease: Option<LeaseId>) -> PutOptions {
    match lease {
        Some(id) => PutOptions::new().with_lease(id.0),
        None => PutOptions::new(),
    }
}

/// Fills in the lease id of a `LeaseNotFound` coming from the pool.
pub(crate) fn lease_error(e: Error, lease: Option<LeaseId>) -> Error {
    match (e, lease) {
        (Error::LeaseNotFound { .. }, Some(id)) => Error::LeaseNotFound { id: id.0 },
        (e, _) => e,
    }
}

pub(crate) fn first_range_kv(resp: &etcd_client::TxnResponse) -> Option<KeyValue> {
    resp.op_responses().into_iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => g.kvs().first().cloned(),
        _ => None,
    })
}

pub(crate) fn raw_versioned(kv: KeyValue) -> Result<Versioned<Vec<u8>>> {
    let (create_revision, mod_revision, version, lease) = (
        kv.create_revision(),
        kv.mod_revision(),
        kv.version(),
        kv.lease(),
    );
    let (key, value) = kv.into_key_value();
    let key = String::from_utf8(key).map_err(|e| Error::InvalidKey {
        key_lossy: String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })?;
    Ok(Versioned {
        key,
        value,
        create_revision,
        mod_revision,
        version,
        lease: (lease != 0).then_some(LeaseId(lease)),
    })
}

pub(crate) fn decode<T: DeserializeOwned>(raw: Versioned<Vec<u8>>) -> Result<Versioned<T>> {
    let value = serde_json::from_slice(&raw.value).map_err(|source| Error::Decode {
        key: raw.key.clone(),
        mod_revision: raw.mod_revision,
        source,
    })?;
    Ok(raw.map(|_| value))
}

pub(crate) fn encode<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|source| Error::Encode {
        key: key.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), vec![b'a', 0x80]);
        assert_eq!(prefix_end(""), vec![0]);
    }

    #[test]
    fn decode_names_the_key() {
        let raw = Versioned {
            key: "/x/y".to_string(),
            value: b"{not json".to_vec(),
            create_revision: 1,
            mod_revision: 1,
            version: 1,
            lease: None,
        };
        let err = decode::<serde_json::Value>(raw).expect_err("bad json");
        assert!(err.to_string().contains("/x/y"), "{err}");
    }
}
