//! `mvc why`: a task's key record, and what changed since the last record for its item
//! (the model is `exec::why`, which the page shows too).

use crate::exec::why::{why_key, why_task};
use anyhow::{Result, bail};

#[derive(clap::Args, Debug)]
pub struct WhyArgs {
    /// FILE STAGE ITEM, or a task KEY (64 hex digits or a unique prefix).
    #[arg(num_args = 1..=3, value_name = "ARGS")]
    pub args: Vec<String>,
    #[command(flatten)]
    pub variants: super::VariantArgs,
}

pub fn run(args: WhyArgs, global: &super::Global) -> Result<super::Output> {
    let why = match args.args.as_slice() {
        [key] => {
            args.variants.need_file(None)?;
            let store = super::open_store(&global.cache_dir(None), global)?;
            why_key(&store, key)?
        }
        [file, stage, item] => {
            let pipeline = super::load(std::path::Path::new(file), &args.variants)?;
            let store = super::open_store(&global.cache_dir(Some(&pipeline)), global)?;
            let (engine, _) =
                crate::exec::plan::plan(&pipeline.workflow, std::sync::Arc::new(store), false)?;
            why_task(&engine, stage, item)?
        }
        _ => bail!("usage: mvc why FILE STAGE ITEM, or mvc why KEY"),
    };
    Ok(super::Output::new(why.to_text(), &why))
}
