pub(crate) mod agent;
pub(crate) mod demo;
pub(crate) mod hub;
