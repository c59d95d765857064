pub mod forward;
pub mod inspect;
