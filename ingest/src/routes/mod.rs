//! One file per endpoint group.

pub mod events;
pub mod health;
pub mod notices;
pub mod openapi;
pub mod read;
pub mod review;
pub mod unsubscribe;
