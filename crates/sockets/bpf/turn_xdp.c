// SPDX-License-Identifier: MIT OR Apache-2.0
//
// turn_xdp: the XDP fast path of turn-server for ChannelData over UDP (RFC 8656 §12).
//
// Userspace owns the truth: it installs an entry in TURN_CLIENT and TURN_PEER only for a channel
// binding that is bound, whose peer has a live permission and passed the peer policy, of a UDP
// allocation with no bandwidth cap in force; it removes the entry when any of that stops. Each
// entry carries the earliest of the channel, permission and allocation deadlines
// (CLOCK_MONOTONIC ns, as bpf_ktime_get_ns) so the program stops forwarding at the deadline even
// when userspace is late. Everything the program does not fully understand goes to the normal
// path (XDP_PASS): STUN, unknown channels, padded or short ChannelData, IPv4 options,
// fragments, IPv6 extension headers, zero IPv6 UDP checksums, results over the egress MTU, and
// any packet whose route (bpf_fib_lookup) is not a plain forward with a known neighbour.
//
//   client -> server listener:  ChannelData(chan, len, payload)
//     => relayed address -> peer: payload                       (4 bytes removed)
//   peer -> relayed address:    payload
//     => server listener -> client: ChannelData(chan, len, payload)   (4 bytes added)
//
// Checksums: the IPv4 header checksum is recomputed (20 bytes, ihl 5); the UDP checksum is
// updated incrementally (RFC 1624) for the changed addresses, ports, lengths and the removed or
// added ChannelData header words, so a packet that arrived with a bad UDP checksum still has one.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define AF_INET 2
#define AF_INET6 10
#define HOP_LIMIT 64

// Keys and values: addresses in network order, IPv4 in the first 4 bytes (rest zero), ports in
// network order. The Rust side (crates/sockets/src/xdp.rs) has the same layouts.
struct client_key {
	__u8 client_ip[16];
	__u8 server_ip[16];
	__be16 client_port;
	__be16 server_port;
	__be16 channel;
	__u16 family; // 4 or 6
};

struct client_val {
	__u8 relay_ip[16];
	__u8 peer_ip[16];
	__be16 relay_port;
	__be16 peer_port;
	__u32 _pad;
	__u64 deadline_ns;
	__u64 packets; // forwarded by this program (atomic add), read by userspace
	__u64 bytes;   // ChannelData payload bytes
};

struct peer_key {
	__u8 peer_ip[16];
	__u8 relay_ip[16];
	__be16 peer_port;
	__be16 relay_port;
	__u16 family;
	__u16 _pad;
};

struct peer_val {
	__u8 client_ip[16];
	__u8 server_ip[16];
	__be16 client_port;
	__be16 server_port;
	__be16 channel;
	__u16 _pad;
	__u64 deadline_ns;
	__u64 packets;
	__u64 bytes;
};

enum counter {
	C_C2P_PACKETS,
	C_C2P_BYTES,
	C_P2C_PACKETS,
	C_P2C_BYTES,
	C_PASS_EXPIRED,   // entry found but past its deadline
	C_PASS_ROUTE,     // bpf_fib_lookup did not give a plain forward (incl. no neighbour)
	C_PASS_MTU,       // the result would exceed the egress MTU
	C_PASS_MALFORMED, // ChannelData length does not match the UDP payload
	C_COUNT,
};

// Sizes are placeholders: the loader sets max_entries (--xdp-max-bindings).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct client_key);
	__type(value, struct client_val);
} TURN_CLIENT SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct peer_key);
	__type(value, struct peer_val);
} TURN_PEER SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, C_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} TURN_COUNTERS SEC(".maps");

// Headers as they lie in the frame; aligned to 2 (every field the program touches is at an
// even offset).
struct hdr4 {
	struct ethhdr eth;
	struct iphdr ip;
	struct udphdr udp;
} __attribute__((packed, aligned(2)));

struct hdr6 {
	struct ethhdr eth;
	struct ipv6hdr ip;
	struct udphdr udp;
} __attribute__((packed, aligned(2)));

static __always_inline void count(__u32 which, __u64 n)
{
	__u64 *c = bpf_map_lookup_elem(&TURN_COUNTERS, &which);
	if (c)
		*c += n;
}

static __always_inline __u16 fold(__u64 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

// One's complement sums of 16-bit words as they lie in memory (the sum is byte-order neutral
// as long as the result is stored the same way).
static __always_inline __u64 add16(__u64 s, __u16 w)
{
	return s + w;
}

static __always_inline __u64 sub16(__u64 s, __u16 w)
{
	return s + (__u16)~w;
}

static __always_inline __u64 add_bytes(__u64 s, const void *p, int n)
{
	const __u16 *w = p;
#pragma unroll
	for (int i = 0; i < n / 2; i++)
		s += w[i];
	return s;
}

static __always_inline __u64 sub_bytes(__u64 s, const void *p, int n)
{
	const __u16 *w = p;
#pragma unroll
	for (int i = 0; i < n / 2; i++)
		s += (__u16)~w[i];
	return s;
}

static __always_inline __u16 ipv4_header_csum(void *ip)
{
	((struct iphdr *)ip)->check = 0;
	return (__u16)~fold(add_bytes(0, (const __u8 *)ip, 20));
}

static __always_inline __u16 finish_udp(__u64 s)
{
	__u16 c = (__u16)~fold(s);
	return c ? c : 0xffff;
}

// RFC 1624 update of a UDP checksum for a datagram whose IP addresses (`alen` bytes: source
// and destination as they lie in the IP header), ports and length changed, and whose
// ChannelData header words (chan, clen_be) were removed (`strip`, to the peer) or added (to
// the client).
static __always_inline __u16 udp_check_rewritten(const void *old_addrs, const struct udphdr *ou,
						 const void *new_addrs, const struct udphdr *nu,
						 int alen, __u16 chan, __u16 clen_be, int strip)
{
	__u64 s = (__u16)~ou->check;
	s = sub_bytes(s, old_addrs, alen);
	s = sub16(s, ou->source);
	s = sub16(s, ou->dest);
	s = sub16(s, ou->len); // pseudo-header length and header length
	s = sub16(s, ou->len);
	s = add_bytes(s, new_addrs, alen);
	s = add16(s, nu->source);
	s = add16(s, nu->dest);
	s = add16(s, nu->len);
	s = add16(s, nu->len);
	if (strip) {
		s = sub16(s, chan);
		s = sub16(s, clen_be);
	} else {
		s = add16(s, chan);
		s = add16(s, clen_be);
	}
	return finish_udp(s);
}

// Route the rewritten packet; on success, fill in the MACs and return the XDP action.
static __always_inline int route(struct xdp_md *ctx, struct bpf_fib_lookup *fib,
				 struct ethhdr *eth)
{
	long rc = bpf_fib_lookup(ctx, fib, sizeof(*fib), 0);
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED) {
		count(C_PASS_MTU, 1);
		return -1;
	}
	if (rc != BPF_FIB_LKUP_RET_SUCCESS) {
		count(C_PASS_ROUTE, 1);
		return -1;
	}
	__builtin_memcpy(eth->h_dest, fib->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib->smac, ETH_ALEN);
	return 0;
}

static __always_inline int out(struct xdp_md *ctx, __u32 ifindex)
{
	if (ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(ifindex, 0);
}

// ChannelData at the start of the UDP payload: its channel number and length words as they
// lie in the packet (network order); -1 when the payload is shorter than 4 bytes.
static __always_inline int channel_header(struct xdp_md *ctx, __u32 off, __u16 *chan,
					  __u16 *clen_be)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u8 *p = data + off;
	if (p + 4 > (__u8 *)end)
		return -1;
	__builtin_memcpy(chan, p, 2);
	__builtin_memcpy(clen_be, p + 2, 2);
	return 0;
}

// Client -> peer over IPv4: strip the ChannelData header, rewrite to relayed address -> peer.
static __noinline int v4_to_peer(struct xdp_md *ctx, struct hdr4 *h, struct client_val *v)
{
	__u16 chan, clen_be;
	if (channel_header(ctx, sizeof(*h), &chan, &clen_be))
		return XDP_PASS;
	__u32 tot = bpf_ntohs(h->ip.tot_len);
	__u32 ulen = bpf_ntohs(h->udp.len);
	__u32 clen = bpf_ntohs(clen_be);
	if (clen + 4 + sizeof(struct udphdr) != ulen) {
		count(C_PASS_MALFORMED, 1);
		return XDP_PASS;
	}
	if (bpf_ktime_get_ns() >= v->deadline_ns) {
		count(C_PASS_EXPIRED, 1);
		return XDP_PASS;
	}
	struct hdr4 n = *h;
	__builtin_memcpy(&n.ip.saddr, v->relay_ip, 4);
	__builtin_memcpy(&n.ip.daddr, v->peer_ip, 4);
	n.udp.source = v->relay_port;
	n.udp.dest = v->peer_port;
	n.ip.tot_len = bpf_htons(tot - 4);
	n.udp.len = bpf_htons(ulen - 4);
	n.ip.ttl = HOP_LIMIT;

	struct bpf_fib_lookup fib = {};
	fib.family = AF_INET;
	fib.tos = n.ip.tos;
	fib.l4_protocol = IPPROTO_UDP;
	fib.sport = n.udp.source;
	fib.dport = n.udp.dest;
	fib.tot_len = tot - 4;
	fib.ipv4_src = n.ip.saddr;
	fib.ipv4_dst = n.ip.daddr;
	fib.ifindex = ctx->ingress_ifindex;
	if (route(ctx, &fib, &n.eth))
		return XDP_PASS;

	n.ip.check = ipv4_header_csum((__u8 *)&n + sizeof(struct ethhdr));
	if (h->udp.check) { // zero: no checksum (IPv4), stays so
		n.udp.check = udp_check_rewritten(&h->ip.saddr, &h->udp, &n.ip.saddr, &n.udp, 8,
							  chan, clen_be, 1);
	}
	if (bpf_xdp_adjust_head(ctx, 4))
		return XDP_PASS;
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	if (data + sizeof(n) > end)
		return XDP_ABORTED;
	__builtin_memcpy(data, &n, sizeof(n));
	__sync_fetch_and_add(&v->packets, 1);
	__sync_fetch_and_add(&v->bytes, clen);
	count(C_C2P_PACKETS, 1);
	count(C_C2P_BYTES, clen);
	return out(ctx, fib.ifindex);
}

// Peer -> client over IPv4: add the ChannelData header, rewrite to listener -> client.
static __noinline int v4_to_client(struct xdp_md *ctx, struct hdr4 *h, struct peer_val *pv)
{
	__u32 tot = bpf_ntohs(h->ip.tot_len);
	__u32 ulen = bpf_ntohs(h->udp.len);
	__u32 plen = ulen - sizeof(struct udphdr);
	if (bpf_ktime_get_ns() >= pv->deadline_ns) {
		count(C_PASS_EXPIRED, 1);
		return XDP_PASS;
	}
	if (tot + 4 > 0xffff) {
		count(C_PASS_MTU, 1);
		return XDP_PASS;
	}
	struct hdr4 n = *h;
	__builtin_memcpy(&n.ip.saddr, pv->server_ip, 4);
	__builtin_memcpy(&n.ip.daddr, pv->client_ip, 4);
	n.udp.source = pv->server_port;
	n.udp.dest = pv->client_port;
	n.ip.tot_len = bpf_htons(tot + 4);
	n.udp.len = bpf_htons(ulen + 4);
	n.ip.ttl = HOP_LIMIT;
	__u16 chan = pv->channel;
	__u16 clen_be = bpf_htons(plen);

	struct bpf_fib_lookup fib = {};
	fib.family = AF_INET;
	fib.tos = n.ip.tos;
	fib.l4_protocol = IPPROTO_UDP;
	fib.sport = n.udp.source;
	fib.dport = n.udp.dest;
	fib.tot_len = tot + 4;
	fib.ipv4_src = n.ip.saddr;
	fib.ipv4_dst = n.ip.daddr;
	fib.ifindex = ctx->ingress_ifindex;
	if (route(ctx, &fib, &n.eth))
		return XDP_PASS;

	n.ip.check = ipv4_header_csum((__u8 *)&n + sizeof(struct ethhdr));
	if (h->udp.check) {
		n.udp.check = udp_check_rewritten(&h->ip.saddr, &h->udp, &n.ip.saddr, &n.udp, 8,
							  chan, clen_be, 0);
	}
	if (bpf_xdp_adjust_head(ctx, -4))
		return XDP_PASS;
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	if (data + sizeof(n) + 4 > end)
		return XDP_ABORTED;
	__builtin_memcpy(data, &n, sizeof(n));
	__u8 *ch = data + sizeof(n);
	__builtin_memcpy(ch, &chan, 2);
	__builtin_memcpy(ch + 2, &clen_be, 2);
	__sync_fetch_and_add(&pv->packets, 1);
	__sync_fetch_and_add(&pv->bytes, plen);
	count(C_P2C_PACKETS, 1);
	count(C_P2C_BYTES, plen);
	return out(ctx, fib.ifindex);
}

static __noinline int handle_v4(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct hdr4 h;

	if (data + sizeof(h) > end)
		return XDP_PASS;
	__builtin_memcpy(&h, data, sizeof(h));
	if (h.ip.version != 4 || h.ip.ihl != 5 || h.ip.protocol != IPPROTO_UDP)
		return XDP_PASS;
	if (h.ip.frag_off & bpf_htons(0x3fff)) // MF or a fragment offset
		return XDP_PASS;
	if (fold(add_bytes(0, (const __u8 *)&h + sizeof(struct ethhdr), 20)) != 0xffff)
		return XDP_PASS; // bad header checksum: the stack drops it
	__u32 tot = bpf_ntohs(h.ip.tot_len);
	__u32 ulen = bpf_ntohs(h.udp.len);
	if (ulen < sizeof(struct udphdr) || tot != 20 + ulen)
		return XDP_PASS;
	// The frame is exactly the datagram (or a minimum-size Ethernet frame padded to 60
	// bytes): nothing truncated, and no GRO super-packet whose later segments would be lost.
	if (data + sizeof(struct ethhdr) + tot > end)
		return XDP_PASS;
	if (data + sizeof(struct ethhdr) + tot != end && end - data > ETH_ZLEN)
		return XDP_PASS;

	__u16 chan, clen_be;
	if (ulen >= sizeof(struct udphdr) + 4 &&
	    !channel_header(ctx, sizeof(h), &chan, &clen_be) && (chan & bpf_htons(0xc000)) == bpf_htons(0x4000)) {
		struct client_key k = {};
		__builtin_memcpy(k.client_ip, &h.ip.saddr, 4);
		__builtin_memcpy(k.server_ip, &h.ip.daddr, 4);
		k.client_port = h.udp.source;
		k.server_port = h.udp.dest;
		k.channel = chan;
		k.family = 4;
		struct client_val *v = bpf_map_lookup_elem(&TURN_CLIENT, &k);
		if (v)
			return v4_to_peer(ctx, &h, v);
	}

	struct peer_key pk = {};
	__builtin_memcpy(pk.peer_ip, &h.ip.saddr, 4);
	__builtin_memcpy(pk.relay_ip, &h.ip.daddr, 4);
	pk.peer_port = h.udp.source;
	pk.relay_port = h.udp.dest;
	pk.family = 4;
	struct peer_val *pv = bpf_map_lookup_elem(&TURN_PEER, &pk);
	if (pv)
		return v4_to_client(ctx, &h, pv);
	return XDP_PASS;
}

// Client -> peer over IPv6.
static __noinline int v6_to_peer(struct xdp_md *ctx, struct hdr6 *h, struct client_val *v)
{
	__u16 chan, clen_be;
	if (channel_header(ctx, sizeof(*h), &chan, &clen_be))
		return XDP_PASS;
	__u32 ulen = bpf_ntohs(h->udp.len);
	__u32 clen = bpf_ntohs(clen_be);
	if (clen + 4 + sizeof(struct udphdr) != ulen) {
		count(C_PASS_MALFORMED, 1);
		return XDP_PASS;
	}
	if (bpf_ktime_get_ns() >= v->deadline_ns) {
		count(C_PASS_EXPIRED, 1);
		return XDP_PASS;
	}
	struct hdr6 n = *h;
	__builtin_memcpy(&n.ip.saddr, v->relay_ip, 16);
	__builtin_memcpy(&n.ip.daddr, v->peer_ip, 16);
	n.udp.source = v->relay_port;
	n.udp.dest = v->peer_port;
	n.ip.payload_len = bpf_htons(ulen - 4);
	n.udp.len = bpf_htons(ulen - 4);
	n.ip.hop_limit = HOP_LIMIT;

	struct bpf_fib_lookup fib = {};
	fib.family = AF_INET6;
	fib.l4_protocol = IPPROTO_UDP;
	fib.sport = n.udp.source;
	fib.dport = n.udp.dest;
	fib.tot_len = sizeof(struct ipv6hdr) + ulen - 4;
	__builtin_memcpy(fib.ipv6_src, &n.ip.saddr, 16);
	__builtin_memcpy(fib.ipv6_dst, &n.ip.daddr, 16);
	fib.ifindex = ctx->ingress_ifindex;
	if (route(ctx, &fib, &n.eth))
		return XDP_PASS;

	n.udp.check = udp_check_rewritten(&h->ip.saddr, &h->udp, &n.ip.saddr, &n.udp, 32,
						  chan, clen_be, 1);

	if (bpf_xdp_adjust_head(ctx, 4))
		return XDP_PASS;
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	if (data + sizeof(n) > end)
		return XDP_ABORTED;
	__builtin_memcpy(data, &n, sizeof(n));
	__sync_fetch_and_add(&v->packets, 1);
	__sync_fetch_and_add(&v->bytes, clen);
	count(C_C2P_PACKETS, 1);
	count(C_C2P_BYTES, clen);
	return out(ctx, fib.ifindex);
}

// Peer -> client over IPv6.
static __noinline int v6_to_client(struct xdp_md *ctx, struct hdr6 *h, struct peer_val *pv)
{
	__u32 ulen = bpf_ntohs(h->udp.len);
	__u32 plen = ulen - sizeof(struct udphdr);
	if (bpf_ktime_get_ns() >= pv->deadline_ns) {
		count(C_PASS_EXPIRED, 1);
		return XDP_PASS;
	}
	if (ulen + 4 > 0xffff) {
		count(C_PASS_MTU, 1);
		return XDP_PASS;
	}
	struct hdr6 n = *h;
	__builtin_memcpy(&n.ip.saddr, pv->server_ip, 16);
	__builtin_memcpy(&n.ip.daddr, pv->client_ip, 16);
	n.udp.source = pv->server_port;
	n.udp.dest = pv->client_port;
	n.ip.payload_len = bpf_htons(ulen + 4);
	n.udp.len = bpf_htons(ulen + 4);
	n.ip.hop_limit = HOP_LIMIT;
	__u16 chan = pv->channel;
	__u16 clen_be = bpf_htons(plen);

	struct bpf_fib_lookup fib = {};
	fib.family = AF_INET6;
	fib.l4_protocol = IPPROTO_UDP;
	fib.sport = n.udp.source;
	fib.dport = n.udp.dest;
	fib.tot_len = sizeof(struct ipv6hdr) + ulen + 4;
	__builtin_memcpy(fib.ipv6_src, &n.ip.saddr, 16);
	__builtin_memcpy(fib.ipv6_dst, &n.ip.daddr, 16);
	fib.ifindex = ctx->ingress_ifindex;
	if (route(ctx, &fib, &n.eth))
		return XDP_PASS;

	n.udp.check = udp_check_rewritten(&h->ip.saddr, &h->udp, &n.ip.saddr, &n.udp, 32,
						  chan, clen_be, 0);

	if (bpf_xdp_adjust_head(ctx, -4))
		return XDP_PASS;
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	if (data + sizeof(n) + 4 > end)
		return XDP_ABORTED;
	__builtin_memcpy(data, &n, sizeof(n));
	__u8 *ch = data + sizeof(n);
	__builtin_memcpy(ch, &chan, 2);
	__builtin_memcpy(ch + 2, &clen_be, 2);
	__sync_fetch_and_add(&pv->packets, 1);
	__sync_fetch_and_add(&pv->bytes, plen);
	count(C_P2C_PACKETS, 1);
	count(C_P2C_BYTES, plen);
	return out(ctx, fib.ifindex);
}

static __noinline int handle_v6(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct hdr6 h;

	if (data + sizeof(h) > end)
		return XDP_PASS;
	__builtin_memcpy(&h, data, sizeof(h));
	// No extension headers: the next header must be UDP itself.
	if (h.ip.version != 6 || h.ip.nexthdr != IPPROTO_UDP)
		return XDP_PASS;
	__u32 ulen = bpf_ntohs(h.udp.len);
	if (ulen < sizeof(struct udphdr) || bpf_ntohs(h.ip.payload_len) != ulen)
		return XDP_PASS;
	if (h.udp.check == 0) // mandatory over IPv6 (RFC 8200 §8.1)
		return XDP_PASS;
	if (data + sizeof(struct ethhdr) + sizeof(struct ipv6hdr) + ulen > end)
		return XDP_PASS;
	if (data + sizeof(struct ethhdr) + sizeof(struct ipv6hdr) + ulen != end &&
	    end - data > ETH_ZLEN)
		return XDP_PASS;

	__u16 chan, clen_be;
	if (ulen >= sizeof(struct udphdr) + 4 &&
	    !channel_header(ctx, sizeof(h), &chan, &clen_be) && (chan & bpf_htons(0xc000)) == bpf_htons(0x4000)) {
		struct client_key k = {};
		__builtin_memcpy(k.client_ip, &h.ip.saddr, 16);
		__builtin_memcpy(k.server_ip, &h.ip.daddr, 16);
		k.client_port = h.udp.source;
		k.server_port = h.udp.dest;
		k.channel = chan;
		k.family = 6;
		struct client_val *v = bpf_map_lookup_elem(&TURN_CLIENT, &k);
		if (v)
			return v6_to_peer(ctx, &h, v);
	}

	struct peer_key pk = {};
	__builtin_memcpy(pk.peer_ip, &h.ip.saddr, 16);
	__builtin_memcpy(pk.relay_ip, &h.ip.daddr, 16);
	pk.peer_port = h.udp.source;
	pk.relay_port = h.udp.dest;
	pk.family = 6;
	struct peer_val *pv = bpf_map_lookup_elem(&TURN_PEER, &pk);
	if (pv)
		return v6_to_client(ctx, &h, pv);
	return XDP_PASS;
}

SEC("xdp")
int turn_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		return handle_v4(ctx);
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return handle_v6(ctx);
	return XDP_PASS;
}

char _license[] SEC("license") = "Dual MIT/GPL";
