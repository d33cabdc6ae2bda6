// Compiles every bpf/*.bpf.c of a target with the toolchain's clang (which has the BPF
// backend) and embeds each object in the target as a hex string, so `swift build` alone
// produces a binary that carries its BPF programs.
import Foundation
import PackagePlugin

@main struct BPFPlugin: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        let dir = target.directoryURL.appending(path: "bpf")
        let shared = context.package.directoryURL.appending(path: "Sources/CKlabLinux/include")
        let files = try FileManager.default.contentsOfDirectory(atPath: dir.path()).sorted()
        let headers = (files.filter { $0.hasSuffix(".h") }.map { dir.appending(path: $0) })
            + [shared.appending(path: "klab_event.h")]
        let clang = try context.tool(named: "clang").url
        let embed = try context.tool(named: "klab-bpf-embed").url
        return files.filter { $0.hasSuffix(".bpf.c") }.map { name in
            let stem = String(name.dropLast(".bpf.c".count))
            let out = context.pluginWorkDirectoryURL.appending(path: "\(stem)_bpf.swift")
            let symbol = "bpfObject_" + stem.map { $0.isLetter || $0.isNumber ? String($0) : "_" }.joined()
            return .buildCommand(
                displayName: "Compiling BPF program \(name)",
                executable: embed,
                arguments: [clang.path(), dir.appending(path: name).path(), out.path(), symbol,
                            "-I", shared.path(), "-I", "/usr/include/\(archTriple())"],
                inputFiles: [dir.appending(path: name)] + headers,
                outputFiles: [out])
        }
    }
}

/// Debian keeps <asm/types.h> under the multiarch folder, which `-target bpf` does not search.
private func archTriple() -> String {
    #if arch(arm64)
    return "aarch64-linux-gnu"
    #else
    return "x86_64-linux-gnu"
    #endif
}
