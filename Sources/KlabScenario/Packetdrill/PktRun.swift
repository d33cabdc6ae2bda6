import Foundation
import KlabLab
import KlabPacket
import KlabResults

extension Runner {
    /// Runs a packetdrill script in a fresh host, as a YAML scenario runs: one host whose link
    /// is a TUN named tun0 (as packetdrill's), with IFF_VNET_HDR and TSO/GSO offload (as
    /// packetdrill's, so the host sends whole TSO segments), capture, tracer, the script's
    /// events, then the same results folder and placement check.
    public func run(_ script: PktScript, into dir: String) throws -> Outcome {
        let map = try PktAddressMap(script.config)
        let fresh = !FileManager.default.fileExists(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let directory = URL(fileURLWithPath: dir).standardizedFileURL.path
        var started = false
        defer { if !started && fresh { try? FileManager.default.removeItem(atPath: dir) } }
        let hostAddress = IPv4Address(rawValue: map.host), peer = IPv4Address(rawValue: map.peer)
        let host = try LabHost(name: "h1")
        defer { host.shutdown() }
        let tun = try host.addLink(
            name: "tun0", address: hostAddress, prefixLength: map.prefixLength, mtu: script.config.mtu, route: Scenario.labPrefix,
            offload: true)
        // packetdrill's own route to the remote address, via the gateway (netdev.c's
        // route_traffic_to_device): scripts change it (`ip route change 192.0.2.1 … advmss 600`).
        let gateway = IPv4Address(rawValue: map.map(script.config.gatewayIP) ?? map.host)
        try host.run { try Netlink().addRoute(IPv4Prefix(address: peer, length: 32)!, ifindex: tun.ifindex, via: gateway) }
        let recorder = try PacketRecorder(ResultsLayout(dir), snaplen: snaplen ?? Runner.whole, offsetNs: Clock.realtimeOffsetNs())
        let link = recorder.addLink(tun, netns: host.netnsInode)
        let scenario = Scenario(
            file: script.file, name: script.name, about: "packetdrill script",
            host: HostSpec(name: "h1", address: hostAddress, prefixLength: map.prefixLength, mtu: script.config.mtu), hosts: [],
            wire: WireSpec(), peer: peer, peerPort: 0, hostPort: script.config.bindPort, timeoutNs: UInt64(PktPlayer.maxRuntimeUs) * 1000,
            steps: [])
        let (tracer, tscHz) = try observe(scenario, [host], recorder, directory)
        defer { tracer.close() }
        started = true
        // The player reads and writes the TUN itself (recording both ways); the Wire only
        // carries the link to Play's records.
        let wire = Wire(tun: tun, recorder: recorder, link: link)
        let play = Play(scenario: scenario, host: host, wire: wire, directory: directory, log: log)
        log("  host \(hostAddress)/\(map.prefixLength) on tun0 (the script's \(script.config.localIP)), peer \(peer) (the script's \(script.config.remoteIP))")
        let player = PktPlayer(script: script, map: map, host: host, tun: tun, wire: wire, directory: directory, play: play, log: log)
        let startedNs = Clock.monotonicNs()
        player.runInHost()
        return try conclude(
            scenario, directory, hosts: [host], tracer: tracer, recorder: recorder, tuns: [tun], play: play, tscHz: tscHz,
            startedNs: startedNs, unexpected: player.leftovers())
    }
}
