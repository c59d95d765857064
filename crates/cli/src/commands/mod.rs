pub mod chat;
pub mod forward;
pub mod gen_args;
pub mod inspect;
pub mod run;
pub mod tokenize;
