//! Metrics, figures and results tables of the evaluate and report stages.

pub mod coverage;
pub mod figures;
pub mod html;
pub mod metrics;
pub mod row;
pub mod table;
pub mod variants;
