//! An entry of a stage's `items`: a bare id (`"a"`) or a table with parameters of its own
//! (`{ id = "a", params = { scale = 2 } }`).

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use std::fmt;

#[derive(Clone, Debug, PartialEq)]
pub struct ItemDecl {
    pub id: String,
    pub params: toml::Table,
}

impl<'de> Deserialize<'de> for ItemDecl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ItemVisitor;
        impl<'de> Visitor<'de> for ItemVisitor {
            type Value = ItemDecl;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an item id string or a table `{ id = \"...\", params = { ... } }`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ItemDecl, E> {
                Ok(ItemDecl {
                    id: v.to_string(),
                    params: toml::Table::new(),
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ItemDecl, A::Error> {
                let mut id = None;
                let mut params = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "id" => id = Some(map.next_value::<String>()?),
                        "params" => params = Some(map.next_value::<toml::Table>()?),
                        other => return Err(de::Error::unknown_field(other, &["id", "params"])),
                    }
                }
                Ok(ItemDecl {
                    id: id.ok_or_else(|| de::Error::missing_field("id"))?,
                    params: params.unwrap_or_default(),
                })
            }
        }
        d.deserialize_any(ItemVisitor)
    }
}
