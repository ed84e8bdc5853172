//! `creme split`: the committed development/confirmation split of the efficacy work
//! (`creme_core::experiment::split`), printed for scripts (`--types`, `--tasks` lists) or people.

use creme_core::experiment::split::{self, Half};

use crate::common::Res;

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Which {
    Development,
    Confirmation,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Part {
    /// The half's perturbation types, as a --types list
    Types,
    /// The half's task ids, as a --tasks list
    Tasks,
}

#[derive(clap::Args, Clone)]
pub struct SplitArgs {
    /// Print one half's list (else both halves, described)
    #[arg(value_enum)]
    pub half: Option<Which>,
    /// What of the half to print
    #[arg(long, value_enum, default_value = "tasks")]
    pub part: Part,
}

fn list(h: &Half, part: Part) -> String {
    match part {
        Part::Types => h.type_list(),
        Part::Tasks => h.task_list(),
    }
}

pub fn run(a: SplitArgs) -> Res {
    let s = split::committed();
    match a.half {
        Some(Which::Development) => println!("{}", list(&s.development, a.part)),
        Some(Which::Confirmation) => println!("{}", list(&s.confirmation, a.part)),
        None => {
            println!(
                "split seed {}; development keeps what was seen before the split",
                s.seed
            );
            for (name, h) in [
                ("development", &s.development),
                ("confirmation", &s.confirmation),
            ] {
                println!("{name}: {} types: {}", h.types.len(), list(h, Part::Types));
                println!("{name}: {} tasks: {}", h.tasks.len(), list(h, Part::Tasks));
            }
        }
    }
    Ok(())
}
