pub(crate) mod agent;
pub(crate) mod bench;
pub(crate) mod demo;
pub(crate) mod grants;
pub(crate) mod hub;
pub(crate) mod policy;
pub(crate) mod rpc;
pub(crate) mod scratch;
