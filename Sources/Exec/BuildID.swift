#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The GNU build ID of an ELF executable (the linker's hash of what it linked): two files with the
/// same one are the same program, whatever their names or paths.
///
/// Read with a few `pread`s (ELF header, program headers, PT_NOTE segments), never the whole file.
/// Only what our builds are (64-bit little-endian ELF) is understood; anything else (a script, a
/// 32-bit or big-endian binary, no build ID note, a short or unreadable file) has none.
public enum BuildID {
    /// This process's own, read once.
    public static let current: [UInt8]? = of("/proc/self/exe")

    /// The build ID of the ELF file at `path`, or nil.
    public static func of(_ path: String) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        // e_ident: magic, ELFCLASS64 (2), ELFDATA2LSB (1).
        guard let header = read(fd, at: 0, count: 64), header[0..<4] == [0x7f, 0x45, 0x4c, 0x46], header[4] == 2,
            header[5] == 1
        else { return nil }
        let programHeaderOffset = header.little(UInt64.self, at: 0x20)
        let entrySize = Int(header.little(UInt16.self, at: 0x36))
        let entryCount = Int(header.little(UInt16.self, at: 0x38))
        // 56 bytes is an Elf64_Phdr; 0xffff (PN_XNUM) would put the count elsewhere, which no
        // executable of ours needs.
        guard entrySize >= 56, entryCount > 0, entryCount < 0xffff,
            let table = read(fd, at: programHeaderOffset, count: entrySize * entryCount)
        else { return nil }
        for index in 0..<entryCount {
            let entry = index * entrySize
            guard table.little(UInt32.self, at: entry) == 4 else { continue }  // PT_NOTE
            let offset = table.little(UInt64.self, at: entry + 8)
            let size = table.little(UInt64.self, at: entry + 32)
            let alignment = table.little(UInt64.self, at: entry + 48) == 8 ? 8 : 4
            // A build ID note is 36 bytes; a notes segment of more than 64 KiB is not one we know.
            guard size <= 65536, let notes = read(fd, at: offset, count: Int(size)) else { continue }
            if let id = gnuBuildID(in: notes, alignment: alignment) { return id }
        }
        return nil
    }

    /// The descriptor of the NT_GNU_BUILD_ID (3) note owned by "GNU" in a notes segment.
    private static func gnuBuildID(in notes: [UInt8], alignment: Int) -> [UInt8]? {
        func aligned(_ value: Int) -> Int { (value + alignment - 1) / alignment * alignment }
        var position = 0
        while position + 12 <= notes.count {
            let nameSize = Int(notes.little(UInt32.self, at: position))
            let descriptorSize = Int(notes.little(UInt32.self, at: position + 4))
            let type = notes.little(UInt32.self, at: position + 8)
            let name = position + 12
            let descriptor = name + aligned(nameSize)
            guard nameSize <= notes.count, descriptorSize <= notes.count, descriptor + descriptorSize <= notes.count
            else { return nil }
            if type == 3, nameSize == 4, notes[name..<name + 4] == [0x47, 0x4e, 0x55, 0], descriptorSize > 0 {
                return Array(notes[descriptor..<descriptor + descriptorSize])
            }
            position = descriptor + aligned(descriptorSize)
        }
        return nil
    }

    /// Exactly `count` bytes at `offset`, or nil (a short file, an error).
    private static func read(_ fd: Int32, at offset: UInt64, count: Int) -> [UInt8]? {
        guard count > 0, count <= 1 << 20, offset <= UInt64(Int64.max - (1 << 21)) else { return nil }
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let got = bytes.withUnsafeMutableBytes {
                pread(fd, $0.baseAddress! + done, count - done, off_t(offset) + off_t(done))
            }
            if got > 0 {
                done += got
            } else if got < 0 && errno == EINTR {
                continue
            } else {
                return nil
            }
        }
        return bytes
    }
}

extension [UInt8] {
    fileprivate func little<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
        var value: T = 0
        for index in (0..<MemoryLayout<T>.size).reversed() { value = value << 8 | T(self[offset + index]) }
        return value
    }
}
