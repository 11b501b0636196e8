// Drives the Node-RED editor of a real appliance (bin/ami-gateway.js start)
// with Debian's Chromium through playwright-core: our palette, the edit
// dialog and help of "mesh in", a rename + deploy, and Import > Examples.
//
// Needs /usr/bin/chromium (Debian package "chromium"); playwright never
// downloads a browser here. Run: npm run build && npx vitest run test/browser
// Set AMI_BROWSER_ARTIFACTS=<dir> to keep the screenshots (they are kept in a
// temporary directory, whose path is printed, whenever a test fails).
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startApplianceProcess, type ApplianceProcess } from '../helpers/appliance.js';

const CHROMIUM = process.env.AMI_CHROMIUM ?? '/usr/bin/chromium';
const MODULE = 'node-red-contrib-ami-gateway';
// Ids from flows/default-appliance.json, installed as the appliance's first flow.
const MESH_IN_ID = 'a1f0c0de00000005';
const HES_OUT_ID = 'a1f0c0de00000006';
const HELP_FIRST_SENTENCE = "Receives what meters post to the gateway's mesh CoAP endpoint";
/** A message-catalog key of one of our nodes shown instead of its translation. */
const RAW_KEY = /\bami-(?:mesh-in|mesh-endpoint|hes-out|hes-endpoint|store|keyring|dlms-decode|dlms-encode|relay|relay-command|firewall|allowlist|optical-read|firmware|firmware-rollout)\.[A-Za-z][\w.-]*/;
/** Per UI step; the whole file stays well under a minute. */
const STEP_MS = 15_000;

let appliance: ApplianceProcess | undefined;
let context: BrowserContext | undefined;
let page: Page;
let userDataDir: string | undefined;
let artifactsDir: string;
let keepArtifacts = process.env.AMI_BROWSER_ARTIFACTS !== undefined;
const failedResponses: string[] = [];
const pageErrors: string[] = [];

function shot(name: string): string {
  return path.join(artifactsDir, `${name}.png`);
}

function flowNode(id: string) {
  return page.locator(`#red-ui-workspace-chart g.red-ui-flow-node-group[id="${id}"]`);
}

beforeAll(async () => {
  artifactsDir = process.env.AMI_BROWSER_ARTIFACTS ?? mkdtempSync(path.join(os.tmpdir(), 'ami-editor-shots-'));
  mkdirSync(artifactsDir, { recursive: true });
  appliance = await startApplianceProcess({ AMI_SIM_METERS: '2', AMI_SIM_INTERVAL: '1' });
  // /ami/health answering means the runtime and its HTTP server (the editor) are up.
  await appliance.waitForHealth(() => true, 30_000);

  userDataDir = mkdtempSync(path.join(os.tmpdir(), 'ami-chromium-'));
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run'],
    viewport: { width: 1400, height: 900 },
    deviceScaleFactor: 2, // sharp element screenshots; page screenshots use scale: 'css'
    locale: 'en-US',
  });
  page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(STEP_MS);
  page.on('response', (response) => {
    if (response.status() >= 400) failedResponses.push(`${response.status()} ${response.request().method()} ${response.url()}`);
  });
  page.on('pageerror', (err) => pageErrors.push(err.message));
});

afterEach(async (ctx) => {
  if (ctx.task.result?.state === 'fail') {
    keepArtifacts = true;
    await page?.screenshot({ path: shot(`failed-${ctx.task.name.replace(/[^\w-]+/g, '_').slice(0, 60)}`), scale: 'css' }).catch(() => undefined);
  }
});

afterAll(async () => {
  // Closing the persistent context ends the Chromium process.
  await context?.close().catch(() => undefined);
  if (userDataDir) rmSync(userDataDir, { recursive: true, force: true });
  if (appliance) {
    await Promise.race([appliance.stop(), new Promise((resolve) => setTimeout(resolve, 15_000))]);
    appliance.cleanup();
  }
  if (keepArtifacts) console.log(`editor screenshots kept in ${artifactsDir}`);
  else rmSync(artifactsDir, { recursive: true, force: true });
});

describe('Node-RED editor of the appliance (Chromium)', () => {
  it('loads the editor with our palette category and nodes, icons and labels translated', async () => {
    await page.goto(`${appliance!.baseUrl}/`);
    const category = page.locator('#red-ui-palette-container-AMI_gateway');
    await category.waitFor({ state: 'visible' });
    await flowNode(MESH_IN_ID).waitFor({ state: 'visible' });
    await flowNode(HES_OUT_ID).waitFor({ state: 'visible' });
    await page.locator('#red-ui-loading-progress').waitFor({ state: 'hidden' });

    expect((await category.locator('.red-ui-palette-header').innerText()).trim()).toBe('AMI gateway');
    const meshIn = category.locator('.red-ui-palette-node[data-palette-type="ami-mesh-in"]');
    const hesOut = category.locator('.red-ui-palette-node[data-palette-type="ami-hes-out"]');
    expect(await meshIn.locator('.red-ui-palette-label').innerText()).toBe('mesh in');
    expect(await hesOut.locator('.red-ui-palette-label').innerText()).toBe('hes out');
    expect(await category.locator('.red-ui-palette-node[data-palette-type="ami-mesh-request"] .red-ui-palette-label').innerText()).toBe('mesh request');
    expect(await category.locator('.red-ui-palette-node[data-palette-type="ami-mesh-events"] .red-ui-palette-label').innerText()).toBe('mesh events');
    // The palette wraps this label over two lines.
    expect((await category.locator('.red-ui-palette-node[data-palette-type="ami-relay-command"] .red-ui-palette-label').innerText()).replace(/\s+/g, ' ')).toBe('relay command');
    expect(await category.locator('.red-ui-palette-node').count()).toBe(12);

    // Icons: the editor only uses a module's icon path when the runtime listed the file.
    const icons: Array<[string, string]> = [
      ['ami-mesh-in', `icons/${MODULE}/ami-mesh.svg`],
      ['ami-hes-out', `icons/${MODULE}/ami-hes.svg`],
      ['ami-relay-command', `icons/${MODULE}/ami-relay.svg`],
    ];
    for (const [type, icon] of icons) {
      const container = category.locator(`.red-ui-palette-node[data-palette-type="${type}"] .red-ui-palette-icon-container`);
      expect(await container.getAttribute('data-palette-icon')).toBe(icon);
      expect(await container.locator('.red-ui-palette-icon').getAttribute('style')).toContain(icon);
      const response = await fetch(`${appliance!.baseUrl}/${icon}`);
      expect(response.status).toBe(200);
      expect(response.headers.get('content-type')).toMatch(/^image\/svg\+xml/);
      expect(await response.text()).toContain('<svg');
    }
    // SVG <image xlink:href>: matched with a namespace-agnostic attribute selector.
    expect(await flowNode(MESH_IN_ID).locator(`image.red-ui-flow-node-icon[*|href="${icons[0]![1]}"]`).count()).toBe(1);
    expect(await flowNode(HES_OUT_ID).locator(`image.red-ui-flow-node-icon[*|href="${icons[1]![1]}"]`).count()).toBe(1);

    // Workspace labels and the port label (outputLabels), translated.
    expect(await flowNode(MESH_IN_ID).locator('.red-ui-flow-node-label').textContent()).toBe('Plain readings');
    expect(await flowNode(HES_OUT_ID).locator('.red-ui-flow-node-label').textContent()).toBe('To HES');
    await flowNode(MESH_IN_ID).locator('.red-ui-flow-port').first().hover();
    const tooltip = page.locator('.red-ui-flow-port-tooltip');
    await tooltip.waitFor({ state: 'visible' });
    expect(await tooltip.textContent()).toBe('meter reading');
    await page.mouse.move(700, 600);

    const paletteText = await category.innerText();
    const chartText = (await page.locator('#red-ui-workspace-chart').textContent()) ?? '';
    expect(paletteText).not.toMatch(RAW_KEY);
    expect(chartText).not.toMatch(RAW_KEY);
  });

  it('opens the "Plain readings" edit dialog with our fields and shows our help', async () => {
    const tray = page.locator('.red-ui-tray', { has: page.locator('#node-input-ackMode') });
    const node = flowNode(MESH_IN_ID).locator('rect.red-ui-flow-node');
    await node.dblclick();
    try {
      await tray.waitFor({ state: 'visible', timeout: 5_000 });
    } catch {
      // Node-RED recognises a double-click itself (two mousedowns within 650 ms), which a
      // heavily loaded machine can miss. Enter edits the selected node, like a double-click.
      await node.click();
      await page.keyboard.press('Enter');
      await tray.waitFor({ state: 'visible' });
    }
    expect(await tray.locator('.red-ui-tray-titlebar').innerText()).toContain('Edit mesh in node');

    // Endpoint: a config-node select holding the flow's mesh endpoint.
    const endpoint = tray.locator('select#node-input-endpoint');
    await endpoint.waitFor({ state: 'visible' });
    expect(await endpoint.inputValue()).toBe('a1f0c0de00000002');
    expect(await endpoint.locator('option:checked').innerText()).toBe('Meter mesh');
    expect((await tray.locator('label[for="node-input-endpoint"]').innerText()).trim()).toBe('Endpoint');

    const ackMode = tray.locator('select#node-input-ackMode');
    expect(await ackMode.inputValue()).toBe('accepted');
    expect((await tray.locator('label[for="node-input-ackMode"]').innerText()).trim()).toBe('Acknowledge');
    const options: Array<[string | null, string | null]> = [];
    for (const option of await ackMode.locator('option').all()) {
      options.push([await option.getAttribute('value'), await option.textContent()]);
    }
    expect(options).toEqual([
      ['accepted', 'when a node accepts it (hes out)'],
      ['received', 'as soon as the flow receives it'],
    ]);
    const resource = tray.locator('select#node-input-resource');
    expect(await resource.inputValue()).toBe('readings');
    expect((await tray.locator('label[for="node-input-resource"]').innerText()).trim()).toBe('Receive');
    expect(await resource.locator('option').count()).toBe(2);
    expect(await tray.locator('#node-input-name').inputValue()).toBe('Plain readings');
    expect(await tray.innerText()).not.toMatch(RAW_KEY);

    // The dialog's help button opens the Help sidebar tab on our node's help.
    await tray.locator('.red-ui-tray-footer-left button:has(i.fa-book)').click();
    // The outer .red-ui-help holds the title and the node's help (itself a .red-ui-help).
    const help = page.locator('.red-ui-sidebar-info .red-ui-help', { hasText: HELP_FIRST_SENTENCE }).first();
    await help.waitFor({ state: 'visible' });
    // Node-RED 4 marks the sidebar tab #red-ui-tab-help .active; Node-RED 5's sidebar is a button with .selected.
    expect(await page.locator('#red-ui-tab-help.active, button[data-tab-id="help"].selected').count()).toBe(1);
    expect((await help.innerText()).trim()).toMatch(/^mesh in\s+Receives what meters post to the gateway's mesh CoAP endpoint: plain readings, or\s+DLMS\/COSEM frames\./);
    expect(await help.innerText()).toContain('exchangeId');
    await page.screenshot({ path: shot('edit-dialog-and-help'), scale: 'css' });
  });

  it('renames the node, deploys it, and the admin API returns the new name', async () => {
    const newName = `Meter readings ${Date.now().toString(36)}`;
    const nameInput = page.locator('#node-input-name');
    await nameInput.fill(newName);
    await page.locator('#node-dialog-ok').click();
    await nameInput.waitFor({ state: 'detached' });
    expect(await flowNode(MESH_IN_ID).locator('.red-ui-flow-node-label').textContent()).toBe(newName);

    const deploy = page.locator('#red-ui-header-button-deploy');
    await page.locator('#red-ui-header-button-deploy:not(.disabled)').waitFor({ state: 'visible' });
    await deploy.click();
    await page.locator('.red-ui-notification-success', { hasText: 'Successfully deployed' }).waitFor({ state: 'visible' });
    await page.locator('#red-ui-header-button-deploy.disabled').waitFor({ state: 'visible' });

    const response = await fetch(`${appliance!.baseUrl}/flows`, { headers: { 'Node-RED-API-Version': 'v2' } });
    expect(response.status).toBe(200);
    const { flows } = (await response.json()) as { flows: Array<{ id: string; name?: string; type: string }> };
    expect(flows.find((n) => n.id === MESH_IN_ID)).toMatchObject({ type: 'ami-mesh-in', name: newName });

    // The redeployed node is back at work: its endpoint's address shows as its status.
    const status = flowNode(MESH_IN_ID).locator('.red-ui-flow-node-status-label');
    await expect
      .poll(() => status.textContent(), { timeout: STEP_MS, interval: 100 })
      .toMatch(new RegExp(`^(\\[[0-9a-fA-F:.]+\\]|[0-9.]+):${appliance!.meshPort}$`));
    expect((await flowNode(HES_OUT_ID).locator('.red-ui-flow-node-status-label').textContent()) ?? '').not.toMatch(RAW_KEY);
  });

  it("lists the module's example flows under Import > Examples", async () => {
    // What the editor's examples browser reads (editor-api: GET /library/:library/:type/*).
    const listing = await fetch(`${appliance!.baseUrl}/library/examples/flows/${MODULE}`);
    expect(listing.status).toBe(200);
    expect(await listing.json()).toEqual(expect.arrayContaining([{ fn: 'default-appliance' }, { fn: 'send-test-reading' }, { fn: 'read-meters' }]));

    await page.locator('#red-ui-header-button-sidemenu').click();
    await page.locator('#menu-item-import').click();
    const tabs = page.locator('#red-ui-clipboard-dialog-import-tabs');
    await tabs.waitFor({ state: 'visible' });
    await tabs.locator('li', { hasText: 'Examples' }).click();
    const examples = page.locator('#red-ui-clipboard-dialog-import-tab-examples');
    await examples.waitFor({ state: 'visible' });
    const moduleFolder = examples.locator('.red-ui-treeList-label', { hasText: MODULE });
    await moduleFolder.click();
    for (const file of ['default-appliance', 'send-test-reading', 'read-meters']) {
      await examples.locator('.red-ui-treeList-label-text', { hasText: new RegExp(`^${file}$`) }).waitFor({ state: 'visible' });
    }
    await page.screenshot({ path: shot('import-examples'), scale: 'css' });
    await page.locator('#red-ui-clipboard-dialog-cancel').click();
    await tabs.waitFor({ state: 'hidden' });
  });

  it("offers the mesh endpoint's serial radio transport with the gateway's serial ports", async () => {
    // What the dialog is told: the ports, or why there is no list (no udev in a container).
    const listing = await fetch(`${appliance!.baseUrl}/ami/serial-ports`);
    expect(listing.status).toBe(200);
    const answer = (await listing.json()) as { ports?: Array<{ path: string; byId: string[] }>; unavailable?: string };

    const meshIn = page.locator('.red-ui-tray', { has: page.locator('#node-input-ackMode') });
    const node = flowNode(MESH_IN_ID).locator('rect.red-ui-flow-node');
    await node.dblclick();
    try {
      await meshIn.waitFor({ state: 'visible', timeout: 5_000 });
    } catch {
      await node.click();
      await page.keyboard.press('Enter');
      await meshIn.waitFor({ state: 'visible' });
    }
    // The pencil next to the endpoint select edits the config node in a tray of its own.
    await meshIn.locator('#node-input-btn-endpoint-edit').click();
    const tray = page.locator('.red-ui-tray', { has: page.locator('#node-config-input-transport') });
    await tray.waitFor({ state: 'visible' });
    expect(await tray.locator('.red-ui-tray-titlebar').innerText()).toContain('mesh endpoint');

    const transport = tray.locator('select#node-config-input-transport');
    expect((await tray.locator('label[for="node-config-input-transport"]').innerText()).trim()).toBe('Transport');
    // The default flow takes the transport from the environment; the select says so with an option of its own.
    expect(await transport.inputValue()).toBe('${AMI_MESH_TRANSPORT}');
    const options: Array<[string | null, string | null]> = [];
    for (const option of await transport.locator('option').all()) {
      options.push([await option.getAttribute('value'), await option.textContent()]);
    }
    expect(options).toEqual(
      expect.arrayContaining([
        ['udp', 'IPv6/UDP interface'],
        ['radio', 'Serial 802.15.4 radio (6LoWPAN)'],
      ]),
    );
    await transport.selectOption('udp');
    const bind = tray.locator('#node-config-input-bind');
    const radioPath = tray.locator('#node-config-input-radioPath');
    await bind.waitFor({ state: 'visible' });
    expect(await radioPath.isVisible()).toBe(false);

    // The radio: its rows instead of the bind address; the port stays (the CoAP port on the radio).
    await transport.selectOption('radio');
    await radioPath.waitFor({ state: 'visible' });
    await bind.waitFor({ state: 'hidden' });
    await tray.locator('#node-config-input-port').waitFor({ state: 'visible' });
    const labels: Array<[string, string]> = [
      ['radioPath', 'Serial port'],
      ['radioBaud', 'Baud rate'],
      ['radioMetadata', 'Metadata'],
      ['radioMac', 'MAC address'],
      ['radioPan', 'PAN ID'],
      ['radioContexts', 'Contexts'],
    ];
    for (const [field, label] of labels) {
      await tray.locator(`#node-config-input-${field}`).waitFor({ state: 'visible' });
      expect((await tray.locator(`label[for="node-config-input-${field}"]`).innerText()).trim()).toBe(label);
    }
    const metadata = tray.locator('select#node-config-input-radioMetadata');
    // The default flow's radio settings are environment references too (AMI_RADIO_*).
    expect(await metadata.inputValue()).toBe('${AMI_RADIO_METADATA}');
    expect(await metadata.locator('option').evaluateAll((all) => all.map((o) => (o as HTMLOptionElement).value))).toEqual(
      expect.arrayContaining(['none', 'rssi-lqi']),
    );
    // Required for the radio: marked while empty, until filled in.
    const mac = tray.locator('#node-config-input-radioMac');
    expect(await mac.inputValue()).toBe('${AMI_RADIO_MAC}');
    await mac.fill('');
    await mac.press('Tab');
    await expect.poll(() => mac.getAttribute('class'), { timeout: STEP_MS, interval: 100 }).toContain('input-error');
    await mac.fill('00:12:4b:00:01:02:03:04');
    await mac.press('Tab'); // fill() sends input events; the editor validates on change (or keyup)
    await expect.poll(() => mac.getAttribute('class'), { timeout: STEP_MS, interval: 100 }).not.toContain('input-error');

    // The port field: the listed ports (by-id names first), or why there is no list. Typing stays possible.
    const tip = tray.locator('#ami-mesh-endpoint-radioPath-tip');
    await expect.poll(() => tip.getAttribute('data-state'), { timeout: STEP_MS, interval: 100 }).not.toBe('listing');
    await tip.waitFor({ state: 'visible' });
    const offered = await tray.locator('#ami-mesh-endpoint-radioPath-ports option').evaluateAll((all) => all.map((o) => (o as HTMLOptionElement).value));
    if (answer.unavailable !== undefined) {
      expect(await tip.innerText()).toBe(`port listing is unavailable: ${answer.unavailable}; type the path`);
      expect(offered).toEqual([]);
    } else if (answer.ports!.length > 0) {
      expect(offered).toEqual(answer.ports!.map((port) => port.byId[0] ?? port.path));
      expect(await tip.innerText()).toContain(`serial ports found: ${answer.ports!.length}`);
    } else {
      expect(await tip.innerText()).toBe('no serial port found; type the path');
    }
    await radioPath.fill('/dev/ttyACM0');
    expect(await radioPath.inputValue()).toBe('/dev/ttyACM0');
    expect(await tray.innerText()).not.toMatch(RAW_KEY);
    await page.screenshot({ path: shot('mesh-endpoint-radio'), scale: 'css' });

    // Cancelled: the flow is as deployed.
    await tray.locator('#node-config-dialog-cancel').click();
    await tray.waitFor({ state: 'detached' });
    await meshIn.locator('#node-dialog-cancel').click();
    await meshIn.waitFor({ state: 'detached' });
    await page.locator('#red-ui-header-button-deploy.disabled').waitFor({ state: 'visible' });
  });

  it('renders the editor without failed requests or script errors (screenshots for review)', async () => {
    await page.screenshot({ path: shot('editor'), scale: 'css' });
    await page.locator('#red-ui-palette-container-AMI_gateway').screenshot({ path: shot('palette-ami-gateway'), scale: 'device' });
    const chart = await page.locator('#red-ui-workspace-chart').boundingBox();
    if (chart) {
      await page.screenshot({ path: shot('flow'), scale: 'device', clip: { x: chart.x, y: chart.y, width: 520, height: 260 } });
    }
    expect(failedResponses).toEqual([]);
    expect(pageErrors).toEqual([]);
  });
});
