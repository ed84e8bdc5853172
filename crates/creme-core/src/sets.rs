//! Which prompt set a result belongs to: the clean prompts or one of the paper's 20 docstring
//! perturbation types. Typed so that a misspelt set is an error where it is parsed, not a
//! silently empty lookup later; serialized as the names the datasets and records use ("clean",
//! "C3", ...), so records written before these types existed read unchanged.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The 20 perturbation types of the CREME paper (ReCode's docstring perturbations), in the
/// paper's order. One source for their names: `dataset::PERTURBATION_TYPES` is derived from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PerturbationType {
    A1,
    A2,
    A3,
    C1,
    C2,
    C3,
    D1,
    D2,
    D3,
    D4,
    E1,
    E2,
    E3,
    E4,
    E5,
    E6,
    P1,
    P2,
    S1,
    S2,
}

impl PerturbationType {
    pub const ALL: [PerturbationType; 20] = {
        use PerturbationType::*;
        [
            A1, A2, A3, C1, C2, C3, D1, D2, D3, D4, E1, E2, E3, E4, E5, E6, P1, P2, S1, S2,
        ]
    };

    pub fn name(self) -> &'static str {
        crate::dataset::PERTURBATION_TYPES[self as usize]
    }

    /// The family letter (A, C, D, E, P, S), for stratified splits.
    pub fn family(self) -> char {
        self.name().as_bytes()[0] as char
    }
}

impl FromStr for PerturbationType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown perturbation type '{s}' (one of {})",
                    crate::dataset::PERTURBATION_TYPES.join(", ")
                )
            })
    }
}

impl fmt::Display for PerturbationType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A prompt set: the clean prompts or a perturbed variant of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetName {
    Clean,
    Perturbed(PerturbationType),
}

impl SetName {
    pub const CLEAN_NAME: &'static str = "clean";

    pub fn name(self) -> &'static str {
        match self {
            SetName::Clean => Self::CLEAN_NAME,
            SetName::Perturbed(t) => t.name(),
        }
    }

    pub fn is_clean(self) -> bool {
        self == SetName::Clean
    }

    pub fn perturbation(self) -> Option<PerturbationType> {
        match self {
            SetName::Clean => None,
            SetName::Perturbed(t) => Some(t),
        }
    }

    /// Clean and the 20 types, in the paper's order.
    pub fn all() -> Vec<SetName> {
        std::iter::once(SetName::Clean)
            .chain(PerturbationType::ALL.map(SetName::Perturbed))
            .collect()
    }

    /// A comma list of sets: `clean`, type names, or `all` (clean + the 20 types); duplicates
    /// dropped, order kept.
    pub fn parse_list(spec: &str) -> Result<Vec<SetName>, String> {
        let mut out: Vec<SetName> = Vec::new();
        for item in spec.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let more = if item == "all" {
                SetName::all()
            } else {
                vec![item.parse().map_err(|_| {
                    format!(
                        "unknown set '{item}' (clean, all, or one of {})",
                        crate::dataset::PERTURBATION_TYPES.join(", ")
                    )
                })?]
            };
            for s in more {
                if !out.contains(&s) {
                    out.push(s);
                }
            }
        }
        if out.is_empty() {
            return Err("the list names no set".into());
        }
        Ok(out)
    }
}

impl FromStr for SetName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == Self::CLEAN_NAME {
            Ok(SetName::Clean)
        } else {
            s.parse().map(SetName::Perturbed)
        }
    }
}

impl fmt::Display for SetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for SetName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for SetName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for PerturbationType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for PerturbationType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_follow_the_dataset_list() {
        for (t, name) in PerturbationType::ALL
            .iter()
            .zip(crate::dataset::PERTURBATION_TYPES)
        {
            assert_eq!(t.name(), name);
            assert_eq!(name.parse::<PerturbationType>().unwrap(), *t);
        }
        let sets = SetName::all();
        assert_eq!(sets.len(), 21);
        let json = serde_json::to_string(&sets).unwrap();
        assert!(json.starts_with("[\"clean\",\"A1\""), "{json}");
        assert_eq!(serde_json::from_str::<Vec<SetName>>(&json).unwrap(), sets);
    }

    #[test]
    fn lists_parse_with_all_and_refuse_unknown_names() {
        let l = SetName::parse_list("clean, C3,C3").unwrap();
        assert_eq!(
            l,
            vec![SetName::Clean, SetName::Perturbed(PerturbationType::C3)]
        );
        assert_eq!(SetName::parse_list("C3,all").unwrap().len(), 21);
        assert!(SetName::parse_list("X9").unwrap_err().contains("X9"));
        assert!(SetName::parse_list(" , ").is_err());
        assert!(serde_json::from_str::<SetName>("\"c3\"").is_err());
        assert_eq!(PerturbationType::P2.family(), 'P');
    }
}
