/// Known-good packets produced by an independent encoder: scapy 2.8.0
/// (Python 3.11), offline, with `raw(<expression>).hex()` where
/// A = "198.18.0.2", B = "198.18.0.1". The tests do not need Python.
enum Scapy {
    /// IP(src=A,dst=B,id=0,flags="DF")/TCP(sport=40000,dport=8080,seq=0,flags="S",window=65535,
    ///   options=[("MSS",1460),("SAckOK",b""),("Timestamp",(1,0)),("NOP",None),("WScale",7)])
    static let tcpSYN = hex("4500003c000040004006ae94c6120002c61200019c401f900000000000000000a002ffff00070000020405b40402080a000000010000000001030307")

    /// IP(src=B,dst=A,id=0,flags="DF")/TCP(sport=8080,dport=40000,seq=3000000000,ack=1,flags="SA",window=65483,
    ///   options=[("MSS",1460),("SAckOK",b""),("Timestamp",(2,1)),("NOP",None),("WScale",7)])
    static let tcpSYNACK = hex("4500003c000040004006ae94c6120001c61200021f909c40b2d05e0000000001a012ffcbef560000020405b40402080a000000020000000101030307")

    /// IP(src=A,dst=B,id=0x1c46,flags="DF")/TCP(sport=40000,dport=8080,seq=1001,ack=3000000001,flags="PA",window=257,
    ///   options=[("NOP",None),("NOP",None),("Timestamp",(100,2))])/Raw(bytes(range(100)))
    static let tcpPSHACK = hex("""
        450000981c464000400691f2c6120002c61200019c401f90000003e9b2d05e01801801017c6900000101080a0000006400000002\
        000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f30313233\
        3435363738393a3b3c3d3e3f404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f60616263
        """)

    /// IP(src=B,dst=A,id=7,flags="DF")/TCP(sport=8080,dport=40000,seq=3000000001,ack=1001,flags="A",window=501,
    ///   options=[("NOP",None),("NOP",None),("SAck",(2001,3001,4001,5001))])
    static let tcpSACK = hex("4500003c000740004006ae8dc6120001c61200021f909c40b2d05e01000003e9a01001f5c450000001010512000007d100000bb900000fa100001389")

    /// IP(src=A,dst=B,id=0,flags="DF",ttl=3,tos=0x10)/TCP(sport=1,dport=2,seq=0xfffffff0,flags="SEC",window=1024,
    ///   options=[("MSS",536),("WScale",14)])          — 7 option bytes, padded with one zero
    static let tcpPadded = hex("45100030000040000306eb90c6120002c612000100010002fffffff00000000070c20400e9df00000204021803030e00")

    /// IP(src=A,dst=B,id=9)/TCP(sport=40000,dport=8080,seq=5,ack=6,flags="FPU",window=0,urgptr=3)/Raw(b"xyz")
    static let tcpFPU = hex("4500002b000900004006ee9cc6120002c61200019c401f900000000500000006502900007538000378797a")

    /// IP(src=A,dst=B,id=3,flags="DF")/TCP(sport=40000,dport=8080,seq=7,ack=8,flags="A",window=100,
    ///   options=[(253,b"\x12\x34"),("NOP",None),("NOP",None)])
    static let tcpUnknownOption = hex("45000030000340004006ae9dc6120002c61200019c401f9000000007000000087010006437270000fd04123401010000")

    /// IP(src=A,dst=B,id=0x1234)/UDP(sport=5353,dport=53)/Raw(b"hello klab")
    static let udp = hex("45000026123400004011dc6bc6120002c612000114e9003500124dc368656c6c6f206b6c6162")

    /// IP(src=A,dst=B,id=1)/UDP(sport=1234,dport=4321)
    static let udpEmpty = hex("4500001c000100004011eea8c6120002c612000104d210e100085e03")

    /// IP(src=A,dst=B,id=2)/UDP(sport=1000,dport=2000)/Raw(bytes([103,250]))
    /// The payload word 0x67fa is the checksum of the same datagram with payload 0x0000,
    /// so the one's complement sum becomes 0xFFFF and the checksum computes to 0,
    /// which RFC 768 requires to be sent as 0xFFFF.
    static let udpChecksumFFFF = hex("4500001e000200004011eea5c6120002c612000103e807d0000affff67fa")

    /// IP(src=A,dst=B,id=0x4d2,flags="DF")/ICMP(type=8,id=7,seq=1)/Raw(b"klab-ping-payload!")
    static let icmpEchoRequest = hex("4500002e04d240004001a9d5c6120002c612000108006fcc000700016b6c61622d70696e672d7061796c6f616421")

    /// IP(src=B,dst=A,id=0x9a1)/ICMP(type=0,id=7,seq=1)/Raw(b"klab-ping-payload!")
    static let icmpEchoReply = hex("4500002e09a100004001e506c6120001c6120002000077cc000700016b6c61622d70696e672d7061796c6f616421")

    /// IP(src=B,dst=A,id=0x55,tos=0xc0)/ICMP(type=3,code=3)/raw(<udp above>)[:28]
    static let icmpPortUnreachable = hex("45c00038005500004001ed88c6120001c612000203039a090000000045000026123400004011dc6bc6120002c612000114e9003500124dc3")

    /// IP(src=B,dst=A,id=0x56,tos=0xc0)/ICMP(type=3,code=3)/raw(<udp above>)   — whole datagram quoted
    static let icmpPortUnreachableFull = hex("45c00042005600004001ed7dc6120001c6120002030389480000000045000026123400004011dc6bc6120002c612000114e9003500124dc368656c6c6f206b6c6162")

    /// IP(src="198.18.0.254",dst=A,id=0x57)/ICMP(type=3,code=4,nexthopmtu=1400)/raw(IP(src=A,dst=B,id=0x1c46,flags="DF")
    ///   /TCP(sport=40000,dport=8080,seq=1001,ack=3000000001,flags="PA",window=257)/Raw(bytes(range(100))))[:28]
    static let icmpFragNeeded = hex("45000038005700004001ed49c61200fec6120002030437ca000005784500008c1c464000400691fec6120002c61200019c401f90000003e9")

    /// IP(src="198.18.0.254",dst=A,id=0x58)/ICMP(type=11,code=0)/raw(IP(src=A,dst=B,id=0x1234,ttl=1)
    ///   /UDP(sport=5353,dport=53)/Raw(b"hello klab"))[:28]
    static let icmpTimeExceeded = hex("45000038005800004001ed48c61200fec61200020b00920c00000000450000261234000001111b6cc6120002c612000114e9003500124dc3")

    /// IP(src=A,dst=B,id=0x4242,flags="MF",frag=185,proto=17)/Raw(bytes(range(16)))   — offset 185×8 = 1480
    static let fragmentMF1480 = hex("45000024424220b940118ba6c6120002c6120001000102030405060708090a0b0c0d0e0f")

    /// IP(src=A,dst=B,id=0xbeef,flags="DF",ttl=1,options=[b"\x94\x04\x00\x00"])/UDP(sport=7,dport=9)/Raw(b"opt")
    /// — DF plus a Router Alert option (RFC 2113)
    static let ipDFOptions = hex("46000023beef4000011199aec6120002c61200019404000000070009000b902f6f7074")

    /// IP(src=A,dst=B,id=5,proto=47)/Raw(b"\x00\x00\x08\x00")   — GRE, not parsed further
    static let gre = hex("4500001800050000402fee8ac6120002c612000100000800")

    /// dg = IP(src=A,dst=B,id=0x4242)/UDP(sport=5000,dport=6000)/Raw(bytes(range(40)))
    static let datagram = hex("45000044424200004011ac3fc6120002c6120001138817700030cadc000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f2021222324252627")
    /// fragment(dg, fragsize=24): first fragment (offset 0, MF) and the last (offset 24)
    static let fragment0 = hex("4500002c4242200040118c57c6120002c6120001138817700030cadc000102030405060708090a0b0c0d0e0f")
    static let fragment24 = hex("4500002c424200034011ac54c6120002c6120001101112131415161718191a1b1c1d1e1f2021222324252627")

    /// Every whole (unfragmented) vector: checksums must verify and any corruption be noticed.
    static let whole: [(String, [UInt8])] = [
        ("tcpSYN", tcpSYN), ("tcpSYNACK", tcpSYNACK), ("tcpPSHACK", tcpPSHACK), ("tcpSACK", tcpSACK),
        ("tcpPadded", tcpPadded), ("tcpFPU", tcpFPU), ("tcpUnknownOption", tcpUnknownOption), ("udp", udp),
        ("udpEmpty", udpEmpty), ("udpChecksumFFFF", udpChecksumFFFF), ("icmpEchoRequest", icmpEchoRequest),
        ("icmpEchoReply", icmpEchoReply), ("icmpPortUnreachable", icmpPortUnreachable),
        ("icmpPortUnreachableFull", icmpPortUnreachableFull), ("icmpFragNeeded", icmpFragNeeded),
        ("icmpTimeExceeded", icmpTimeExceeded), ("ipDFOptions", ipDFOptions), ("datagram", datagram),
    ]
    static let fragments: [(String, [UInt8])] = [
        ("fragmentMF1480", fragmentMF1480), ("fragment0", fragment0), ("fragment24", fragment24),
    ]
    static let all = whole + fragments + [("gre", gre)]
}
