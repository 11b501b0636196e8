// Prints one plain closing line, "vitest: N passed, N failed, N skipped", that
// CI reads (vitest's own summary is formatted for people).
export default class SummaryLineReporter {
  onTestRunEnd(testModules, unhandledErrors) {
    let passed = 0;
    let failed = 0;
    let skipped = 0;
    for (const testModule of testModules) {
      // A file that failed to load has no tests but did fail.
      if (testModule.state() === 'failed' && [...testModule.children.allTests()].length === 0) failed += 1;
      for (const test of testModule.children.allTests()) {
        const state = test.result().state;
        if (state === 'passed') passed += 1;
        else if (state === 'failed') failed += 1;
        else skipped += 1;
      }
    }
    failed += unhandledErrors?.length ?? 0;
    console.log(`vitest: ${passed} passed, ${failed} failed, ${skipped} skipped`);
  }
}
