import CNI
import Testing

@Suite struct VersionTests {
    @Test func parsesOnlyThreePartVersions() {
        #expect(CNIVersion("0.3.1") == .v0_3_1)
        #expect(CNIVersion("1.1.0")?.isSupported == true)
        #expect(CNIVersion("0.5.0")?.isSupported == false)
        for bad in ["", "1", "1.0", "1.0.0.0", "a.b.c", "1.-1.0", "1..0", " 1.0.0", "+1.0.0"] {
            #expect(CNIVersion(bad) == nil, "\(bad)")
        }
    }

    @Test func familiesFollowTheSpec() {
        #expect(CNIVersion.v0_1_0.resultFamily == .legacy)
        #expect(CNIVersion.v0_2_0.resultFamily == .legacy)
        #expect(CNIVersion.v0_3_0.resultFamily == .v04)
        #expect(CNIVersion.v0_4_0.resultFamily == .v04)
        #expect(CNIVersion.v1_0_0.resultFamily == .v1)
        #expect(CNIVersion.v1_1_0.resultFamily == .v1)
        #expect(CNIVersion.v0_3_1 < .v0_4_0)
    }
}
