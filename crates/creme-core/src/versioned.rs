//! Records that carry a `version` field: read only versions this build knows, and say which one
//! was found when refusing. Records written before versions existed have none and read as 0.

use serde::de::DeserializeOwned;
use serde::Deserialize;

/// Parse one JSON record of a kind whose versions `oldest..=newest` this build reads; `what`
/// names the kind in messages ("a sample record").
pub fn parse<T: DeserializeOwned>(
    text: &str,
    oldest: u32,
    newest: u32,
    what: &str,
) -> Result<T, String> {
    #[derive(Deserialize)]
    struct VersionOnly {
        #[serde(default)]
        version: u32,
    }
    let v: VersionOnly = serde_json::from_str(text).map_err(|e| format!("not {what} ({e})"))?;
    if !(oldest..=newest).contains(&v.version) {
        return Err(format!(
            "{what} of version {} (this build reads versions {oldest} to {newest}); use the creme that wrote it, or a new output directory",
            v.version
        ));
    }
    serde_json::from_str(text)
        .map_err(|e| format!("{what} of version {} that does not parse: {e}", v.version))
}
