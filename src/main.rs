//! The `cardgate` executable; the command line lives in [`cardgate::cli`], the choice of
//! allocator is explained in [`cardgate::alloc`].

#[global_allocator]
static ALLOCATOR: cardgate::alloc::Allocator = cardgate::alloc::Allocator;

fn main() -> std::process::ExitCode {
    cardgate::cli::main()
}
