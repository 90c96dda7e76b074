//! `turn_proto::proxy::decode` (PROXY protocol v2 header) on arbitrary bytes.
//!
//! Checks, beyond "never panics":
//! - `Incomplete { needed_bytes }` asks for more than it was given, never more than
//!   `MAX_HEADER_BYTES`, and every prefix of the input decides the same way or asks for more;
//! - `Complete { header_bytes }` is within the input and `MAX_HEADER_BYTES`, and the same bytes
//!   followed by anything decode to the same header (nothing past the header is looked at).
#![no_main]

use libfuzzer_sys::fuzz_target;
use turn_proto::proxy::{decode, Decoded, MAX_HEADER_BYTES};

fuzz_target!(|data: &[u8]| {
    match decode(data) {
        Ok(Decoded::Incomplete { needed_bytes }) => {
            assert!(needed_bytes > data.len() && needed_bytes <= MAX_HEADER_BYTES);
        }
        Ok(Decoded::Complete {
            header,
            header_bytes,
        }) => {
            assert!(header_bytes <= data.len() && header_bytes <= MAX_HEADER_BYTES);
            let exact = decode(&data[..header_bytes]);
            assert_eq!(
                exact,
                Ok(Decoded::Complete {
                    header,
                    header_bytes
                })
            );
            // A shorter prefix is never complete.
            if header_bytes > 0 {
                assert!(matches!(
                    decode(&data[..header_bytes - 1]),
                    Ok(Decoded::Incomplete { .. })
                ));
            }
        }
        Err(e) => {
            // More bytes never turn a refusal into a header.
            let mut more = data.to_vec();
            more.extend_from_slice(&[0u8; 64]);
            assert_eq!(decode(&more), Err(e));
        }
    }
});
