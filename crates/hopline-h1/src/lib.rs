//! A small HTTP/1.1 wire codec (heads, body framing, chunked) on tokio, used by hopline's
//! server and upstream client.
//!
//! It exists so the gateway owns every byte and every wait: which timeout applies while a
//! head is read, whether any response byte arrived before a connection died (the retry
//! rule), and when a client has gone away while its request is in flight. Message framing
//! follows RFC 9112; ambiguous framing (`Content-Length` with `Transfer-Encoding`,
//! conflicting lengths) is an error, never a guess.

pub mod body;
pub mod client;
pub mod head;
pub mod io;
pub mod path;
pub mod small;
pub mod write;

pub use body::{BodyDecoder, BodyError, BodyLength, Decoded};
pub use head::{HeadLimits, Headers, ParseError, RequestHead, ResponseHead, Version};
pub use io::{
    read_body_chunk, read_request_head, read_response_head, read_response_head_noting,
    wait_first_byte, wait_first_byte_unbuffered, watch_gone, HeadError,
};
