import Foundation

/// Checks a whole scenario once every step is read: names used before they exist or
/// defined twice, and times that cannot happen.
struct Checker {
    let scenario: Scenario

    func check() throws(ScenarioError) {
        var open: [String: SourceLocation] = [:]  // sockets
        var programs: [String: SourceLocation] = [:]  // background programs not yet stopped or waited
        var pending: Set<String> = []  // background socket calls not yet waited
        var everSocket: Set<String> = []
        var packetLines: Set<Int> = []  // lines of packet steps so far
        var lastAt: (ns: UInt64, line: Int)?
        var elapsedFloor: UInt64 = 0  // the least time that has passed by this step
        func use(_ s: String, _ step: Step) throws(ScenarioError) {
            guard open[s] != nil else {
                throw ScenarioError(step.location, everSocket.contains(s) ? "socket '\(s)' is already closed" : "unknown socket '\(s)': create it first with socket: \(s) tcp (or accept)")
            }
        }
        func define(_ s: String, _ step: Step) throws(ScenarioError) {
            if let other = open[s] ?? programs[s] {
                throw ScenarioError(step.location, "duplicate name '\(s)': line \(other.line) already has one open by that name")
            }
            open[s] = step.location
            everSocket.insert(s)
        }
        for step in scenario.steps {
            if let t = step.timing {
                switch t.base {
                case .start:
                    if let last = lastAt, t.offsetNs < last.ns {
                        throw ScenarioError(step.location, "impossible time: at \(Self.show(t.offsetNs)) is before line \(last.line)'s at \(Self.show(last.ns))")
                    }
                    lastAt = (t.offsetNs, step.location.line)
                    elapsedFloor = max(elapsedFloor, t.offsetNs)
                case .previous:
                    elapsedFloor += t.offsetNs
                }
                if elapsedFloor >= scenario.timeoutNs {
                    throw ScenarioError(step.location, "impossible time: this step comes \(Self.show(elapsedFloor)) in, past the scenario's timeout of \(Self.show(scenario.timeoutNs))")
                }
            }
            if case .sleep(let ns) = step.action { elapsedFloor += ns }
            if let s = step.action.socketName, pending.contains(s), !step.background {
                // The background call holds the host's thread: this call would wait behind it anyway.
                if case .socket = step.action {} else { pending.remove(s) }
            }
            switch step.action {
            case .socket(let name, _, _): try define(name, step)
            case .accept(let l, let name): try use(l, step); try define(name, step)
            case .close(let s): try use(s, step); open[s] = nil
            case .wait(let name):
                if pending.remove(name) == nil && programs.removeValue(forKey: name) == nil {
                    throw ScenarioError(step.location, "nothing named '\(name)' runs in the background here: wait takes a background call's socket or a background program")
                }
            case .stop(let name):
                guard programs.removeValue(forKey: name) != nil else {
                    throw ScenarioError(step.location, "no background program named '\(name)' is running here")
                }
            case .program(let p) where p.background:
                if let other = programs[p.name] ?? open[p.name] {
                    throw ScenarioError(step.location, "duplicate name '\(p.name)': line \(other.line) already has one running by that name; give this one name:")
                }
                programs[p.name] = step.location
            case .events(let e):
                if let s = e.sock, !everSocket.contains(s) {
                    throw ScenarioError(step.location, "unknown socket '\(s)': events can be tied to a socket created earlier")
                }
                if let line = e.packetLine, !packetLines.contains(line) {
                    throw ScenarioError(step.location, "packet: \(line) is not the line of an earlier inject, expect or flood step (\(packetLines.isEmpty ? "there is none" : "those are on lines " + packetLines.sorted().map(String.init).joined(separator: ", ")))")
                }
            default:
                if let s = step.action.socketName { try use(s, step) }
            }
            if step.background, let s = step.action.socketName { pending.insert(s) }
            switch step.action {
            case .inject, .expect, .flood: packetLines.insert(step.location.line)
            default: break
            }
        }
    }

    static func show(_ ns: UInt64) -> String {
        ns % 1_000_000_000 == 0 ? "\(ns / 1_000_000_000)s" : ns % 1_000_000 == 0 ? "\(ns / 1_000_000)ms" : String(format: "%.3fms", Double(ns) / 1e6)
    }
}
