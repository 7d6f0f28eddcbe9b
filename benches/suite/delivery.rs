//! Case delivery (being written).

use anyhow::{bail, Result};

use crate::report::Row;
use crate::rig::Ctx;

pub async fn run(_ctx: &Ctx) -> Result<Vec<Row>> {
    bail!("case delivery is not written yet")
}
