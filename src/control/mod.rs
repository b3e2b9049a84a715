//! The control plane: `sheepdog status`, `reload` and `scale` talk to a
//! running sheepdog over a unix socket.
//!
//! - [`protocol`]: the typed requests and replies, shared by both ends.
//! - [`server`]: the non-blocking server inside the supervisor's loop.
//! - [`client`]: finding the right sheepdog, and one request and its reply.
//! - [`view`]: `sheepdog status` for a terminal.
//! - [`top`]: `sheepdog top`, the live view.

pub mod client;
pub mod protocol;
pub mod server;
pub mod top;
pub mod view;
