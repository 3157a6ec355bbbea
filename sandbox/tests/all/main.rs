#[test] fn placeholder() {}
mod component;
